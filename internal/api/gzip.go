package api

import (
	"compress/gzip"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"
)

var gzipPool = sync.Pool{New: func() any { w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed); return w }}

// acceptsGzip reports whether an Accept-Encoding value allows gzip (q=0 refuses it).
func acceptsGzip(ae string) bool {
	for rest := ae; rest != ""; {
		var part string
		part, rest, _ = strings.Cut(rest, ",") // no strings.Split: it allocates on every request
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") || strings.TrimSpace(name) == "*" {
			p := strings.ReplaceAll(params, " ", "")
			return p != "q=0" && p != "q=0.0" && p != "q=0.00" && p != "q=0.000"
		}
	}
	return false
}

// gzipWriter compresses the body lazily: a response without a body (204, 304) is untouched.
type gzipWriter struct {
	gin.ResponseWriter
	gz    *gzip.Writer
	plain bool // the first write was small: the response goes out uncompressed
}

// gzipMinSize is the smallest first write worth compressing (nginx's gzip_min_length): a
// record or a short page is written at once and is often smaller, and compressing it costs
// more CPU than its bytes save on the wire (a profile of cached reads spent 13% of the node's
// CPU in gzip). Under 1 KiB an answer with its headers fits one TCP segment (1460 bytes on
// Ethernet) compressed or not, so gzip saves no packet and no round trip. docs/api.md says so.
const gzipMinSize = 1024

func (w *gzipWriter) start() {
	if w.gz == nil {
		h := w.Header()
		h.Set("Content-Encoding", "gzip")
		h.Del("Content-Length")
		w.gz = gzipPool.Get().(*gzip.Writer)
		w.gz.Reset(w.ResponseWriter)
	}
}

func (w *gzipWriter) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if w.gz == nil && (w.plain || len(b) < gzipMinSize) {
		w.plain = true
		return w.ResponseWriter.Write(b)
	}
	w.start()
	return w.gz.Write(b)
}

func (w *gzipWriter) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

// gzipMiddleware compresses responses of at least gzipMinSize for clients that accept gzip,
// except the change stream (a gzip writer would hold its events back until its buffer fills)
// and /metrics (promhttp compresses on its own, and says Vary itself: it was gzipped twice).
func gzipMiddleware() gin.HandlerFunc {
	return func(c *gin.Context) {
		if route := c.FullPath(); route == changesPath || route == "/metrics" {
			c.Next()
			return
		}
		c.Header("Vary", "Accept-Encoding")
		if !acceptsGzip(c.GetHeader("Accept-Encoding")) || c.Request.Method == "HEAD" {
			c.Next()
			return
		}
		gw := &gzipWriter{ResponseWriter: c.Writer}
		c.Writer = gw
		defer func() {
			if gw.gz != nil {
				_ = gw.gz.Close()
				gzipPool.Put(gw.gz)
			}
			c.Writer = gw.ResponseWriter
		}()
		c.Next()
	}
}
