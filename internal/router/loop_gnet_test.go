package router

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/panjf2000/gnet/v2/pkg/netpoll"
)

// TestGnetIsThePatchedCopy: the loop runs on third_party/gnet, whose pollers do not call
// runtime.Gosched before blocking (third_party/gnet/MERIDIAN.md). It fails if the build stops
// compiling it from there (go.mod's replace), or if a poller calls Gosched again (a newer copy without the patch).
func TestGnetIsThePatchedCopy(t *testing.T) {
	// Where the poller the loop runs was compiled from (test binaries carry no module list).
	pc := reflect.ValueOf((*netpoll.Poller).Polling).Pointer()
	file, _ := runtime.FuncForPC(pc).FileLine(pc)
	if !strings.Contains(filepath.ToSlash(file), "third_party/gnet/pkg/netpoll/") {
		t.Fatalf("gnet's poller is compiled from %s: want the patched copy in third_party/gnet (go.mod's replace)", file)
	}
	dir := filepath.Join("..", "..", "third_party", "gnet", "pkg", "netpoll")
	files, err := filepath.Glob(filepath.Join(dir, "poller_*.go"))
	if err != nil || len(files) < 4 {
		t.Fatalf("pollers in %s: %v, %v", dir, files, err)
	}
	pollings := 0
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		syntax, err := parser.ParseFile(token.NewFileSet(), f, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(syntax, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.FuncDecl:
				if x.Name.Name == "Polling" {
					pollings++
				}
			case *ast.SelectorExpr:
				if id, ok := x.X.(*ast.Ident); ok && id.Name == "runtime" && x.Sel.Name == "Gosched" {
					t.Errorf("%s calls runtime.Gosched: the patch is gone", filepath.Base(f))
				}
			}
			return true
		})
	}
	if pollings < 4 {
		t.Errorf("found %d Polling functions in %v, want the four pollers'", pollings, files)
	}
}
