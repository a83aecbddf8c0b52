package api

import (
	"encoding/json"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// List limits (DESIGN.md §4).
const (
	defaultLimit = 50
	maxLimit     = 200
	maxBatchIDs  = 200
	maxFilters   = 16
	maxFields    = 64
)

// listQuery is a parsed list or batch request.
type listQuery struct {
	Limit  int
	Desc   bool
	Cursor string   // raw, verified later against the scope
	Fields []string // nil = all
	// Filter is the containment object built from where[...]; FilterJSON its canonical form
	// ("" when there is no filter).
	Filter     map[string]any
	FilterJSON string
	IDs        []string // batch read when non-nil
}

// parseQuery parses a raw query string strictly: a malformed pair (a bad %-escape, a `;`
// separator) is a 400 invalid-query problem instead of a pair silently dropped, as
// url.URL.Query would (DESIGN.md §4).
func parseQuery(raw string) (url.Values, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		// url's message quotes the input back in its own words; ours names the rule.
		return nil, invalid(problem.InvalidQuery, "malformed query string: each pair must be key=value with valid %%-escapes, separated by &")
	}
	return q, nil
}

// parseRawListQuery is parseQuery then parseListQuery: what a list or batch request's query
// string means.
func parseRawListQuery(raw string) (listQuery, error) {
	q, err := parseQuery(raw)
	if err != nil {
		return listQuery{Limit: defaultLimit}, err
	}
	return parseListQuery(q)
}

// parseListQuery validates every list parameter. Unknown parameters are rejected so a typo
// ("limt") is a 400, not a silently ignored option. Every error is a 400 invalid-query
// *httpError.
func parseListQuery(q url.Values) (listQuery, error) {
	lq := listQuery{Limit: defaultLimit}
	for key, vals := range q {
		if len(vals) != 1 {
			return lq, invalid(problem.InvalidQuery, "query parameter %q given %d times", key, len(vals))
		}
		v := vals[0]
		switch {
		case key == "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxLimit {
				return lq, invalid(problem.InvalidQuery, "limit must be an integer from 1 to %d", maxLimit)
			}
			lq.Limit = n
		case key == "order":
			switch v {
			case "id":
			case "-id":
				lq.Desc = true
			default:
				return lq, invalid(problem.InvalidQuery, `order must be "id" or "-id"`)
			}
		case key == "cursor":
			if v == "" {
				return lq, invalid(problem.InvalidQuery, "cursor must not be empty")
			}
			lq.Cursor = v
		case key == "fields":
			fs, err := parseFields(v)
			if err != nil {
				return lq, err
			}
			lq.Fields = fs
		case key == "ids":
			ids, err := parseIDs(v)
			if err != nil {
				return lq, err
			}
			lq.IDs = ids
		case strings.HasPrefix(key, "where[") && strings.HasSuffix(key, "]"):
			field := key[len("where[") : len(key)-1]
			if !fieldPattern.MatchString(field) {
				return lq, invalid(problem.InvalidQuery, "where field %q must match %s", field, fieldPattern)
			}
			if lq.Filter == nil {
				lq.Filter = map[string]any{}
			}
			if len(lq.Filter) >= maxFilters {
				return lq, invalid(problem.InvalidQuery, "at most %d where filters", maxFilters)
			}
			lq.Filter[field] = filterValue(v)
		default:
			return lq, invalid(problem.InvalidQuery, "unknown query parameter %q", key)
		}
	}
	if lq.IDs != nil && (lq.Cursor != "" || lq.Filter != nil || q.Has("order") || q.Has("limit")) {
		return lq, invalid(problem.InvalidQuery, "ids cannot be combined with cursor, where, order or limit")
	}
	if lq.Filter != nil {
		b, err := json.Marshal(lq.Filter) // map keys are sorted: canonical
		if err != nil {
			return lq, invalid(problem.InvalidQuery, "where[] values cannot be combined into a filter")
		}
		lq.FilterJSON = string(b)
	}
	return lq, nil
}

// filterValue interprets a where value: a JSON number, true, false, null or a JSON string
// literal ("\"30\"") is taken as that JSON value; anything else is a plain string. So
// where[age]=30 matches the number 30, where[code]="30" the string "30", where[name]=bob "bob".
func filterValue(v string) any {
	switch v {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if len(v) >= 2 && v[0] == '"' {
		var s string
		if json.Unmarshal([]byte(v), &s) == nil {
			return s
		}
	}
	if n := json.Number(v); isJSONNumber(v) {
		return n
	}
	return v
}

// isJSONNumber reports whether s is a JSON number literal.
func isJSONNumber(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	var n json.Number
	if err := json.Unmarshal([]byte(s), &n); err != nil {
		return false
	}
	return string(n) == s
}

func parseFields(v string) ([]string, error) {
	parts := strings.Split(v, ",")
	if len(parts) > maxFields {
		return nil, invalid(problem.InvalidQuery, "at most %d fields", maxFields)
	}
	seen := map[string]bool{}
	var out []string
	for _, f := range parts {
		if !fieldPattern.MatchString(f) {
			return nil, invalid(problem.InvalidQuery, "field %q must match %s", f, fieldPattern)
		}
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out, nil
}

func parseIDs(v string) ([]string, error) {
	parts := strings.Split(v, ",")
	if len(parts) > maxBatchIDs {
		return nil, invalid(problem.InvalidQuery, "at most %d ids", maxBatchIDs)
	}
	seen := map[string]bool{}
	out := make([]string, 0, len(parts))
	for _, id := range parts {
		if !ids.ValidRecord(id) {
			return nil, invalid(problem.InvalidQuery, "id %q must match %s", id, ids.RecordIDPattern)
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out, nil
}
