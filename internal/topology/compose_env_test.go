package topology

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// binaryEnv is what a command's main.go reads from the environment.
type binaryEnv struct {
	reads    map[string]bool // every MERIDIAN_* name passed as a call's first argument (env.Int, os.Getenv, …)
	required map[string]bool // names whose flag help says "(MERIDIAN_X; required"
}

var (
	envVarName   = regexp.MustCompile(`^MERIDIAN_[A-Z0-9_]+$`)
	helpMention  = regexp.MustCompile(`\((MERIDIAN_[A-Z0-9_]+)[;)]`)
	helpRequired = regexp.MustCompile(`\((MERIDIAN_[A-Z0-9_]+); required`)

	binaryEnvMu    sync.Mutex
	binaryEnvCache = map[string]binaryEnv{}
)

// readBinaryEnv parses cmd/<name>/main.go (once per test binary) and returns the environment
// variables it reads. Parsing the source rather than running `<cmd> -h` needs no build, and sees
// variables read outside a flag's default too (the rebalancer's os.Getenv calls).
func readBinaryEnv(t *testing.T, name string) binaryEnv {
	t.Helper()
	binaryEnvMu.Lock()
	defer binaryEnvMu.Unlock()
	if be, ok := binaryEnvCache[name]; ok {
		return be
	}
	path := filepath.Join("..", "..", "cmd", name, "main.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	be := parseBinaryEnv(f)
	if len(be.reads) == 0 {
		t.Fatalf("%s: found no MERIDIAN_* variable read; has the env helper changed?", path)
	}
	binaryEnvCache[name] = be
	return be
}

func parseBinaryEnv(f *ast.File) binaryEnv {
	be := binaryEnv{reads: map[string]bool{}, required: map[string]bool{}}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			if len(n.Args) == 0 {
				return true
			}
			if lit, ok := n.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if v, err := strconv.Unquote(lit.Value); err == nil && envVarName.MatchString(v) {
					be.reads[v] = true
				}
			}
		case *ast.BasicLit:
			if n.Kind != token.STRING {
				return true
			}
			v, err := strconv.Unquote(n.Value)
			if err != nil {
				return true
			}
			for _, m := range helpRequired.FindAllStringSubmatch(v, -1) {
				be.required[m[1]] = true
			}
		}
		return true
	})
	return be
}

// helpMentions are the variables a command's flag help texts name, "(MERIDIAN_X" followed by
// ")" or ";".
func helpMentions(f *ast.File) []string {
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			if v, err := strconv.Unquote(lit.Value); err == nil {
				for _, m := range helpMention.FindAllStringSubmatch(v, -1) {
					out = append(out, m[1])
				}
			}
		}
		return true
	})
	return out
}

// TestBinaryEnvParser checks the source parser against the binaries' own help texts: every
// variable a flag's help names must be found as read, so the parser cannot silently miss a
// reading style, and the router and API node must have required variables.
func TestBinaryEnvParser(t *testing.T) {
	for _, name := range []string{"router", "api", "rebalancer", "gencompose"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("..", "..", "cmd", name, "main.go")
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			be := readBinaryEnv(t, name)
			mentioned := helpMentions(f)
			if len(mentioned) == 0 {
				t.Fatalf("%s names no MERIDIAN_* variable in its help", path)
			}
			for _, v := range mentioned {
				if !be.reads[v] {
					t.Errorf("%s help names %s but the parser did not find it read", path, v)
				}
			}
			if want := map[string]string{"router": "MERIDIAN_REGION", "api": "MERIDIAN_REGION", "gencompose": "MERIDIAN_CLUSTER_TOKEN"}[name]; want != "" && !be.required[want] {
				t.Errorf("%s: %s not found required (required = %v)", path, want, be.required)
			}
		})
	}

	// The parser on a known source: literal names as the first argument of any call (the old
	// env helpers, os.Getenv, internal/envflag's methods), "; required" in help text.
	src := `package main
func f() {
	a := env("MERIDIAN_A", "")
	b := os.Getenv("MERIDIAN_B")
	c := envInt("MERIDIAN_C", 3)
	env := envflag.New(nil)
	fs.DurationVar(&d, "d", env.Duration("MERIDIAN_F", time.Second), "help (MERIDIAN_F)")
	g := envflag.New(nil).String("MERIDIAN_G", "")
	flag.String("x", "", "help (MERIDIAN_A; required)")
	_ = fmt.Sprintf("not an env MERIDIAN_D")
	_ = other("meridian_e")
}`
	f, err := parser.ParseFile(token.NewFileSet(), "x.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	be := parseBinaryEnv(f)
	if got, want := slices.Sorted(mapsKeys(be.reads)), []string{"MERIDIAN_A", "MERIDIAN_B", "MERIDIAN_C", "MERIDIAN_F", "MERIDIAN_G"}; !slices.Equal(got, want) {
		t.Errorf("reads = %v, want %v", got, want)
	}
	if got := slices.Sorted(mapsKeys(be.required)); !slices.Equal(got, []string{"MERIDIAN_A"}) {
		t.Errorf("required = %v, want [MERIDIAN_A]", got)
	}
}

// TestComposeEnvMatchesBinaries fails when a Meridian service in the compose file sets a
// variable its binary does not read, or leaves out one the binary requires.
func TestComposeEnvMatchesBinaries(t *testing.T) {
	p := loadCompose(t)
	checked := map[string]int{}
	for _, s := range p.Services {
		if s.Image != ImageMeridian {
			continue
		}
		if len(s.Command) == 0 {
			t.Errorf("%s: no command; the image's default would run", s.Name)
			continue
		}
		bin := s.Command[0]
		be := readBinaryEnv(t, bin)
		checked[bin]++
		env := envOf(s)
		for k := range env {
			if !strings.HasPrefix(k, "MERIDIAN_") {
				t.Errorf("%s: sets %s, which is not a Meridian variable", s.Name, k)
			} else if !be.reads[k] {
				t.Errorf("%s: sets %s, which cmd/%s does not read", s.Name, k, bin)
			}
		}
		for k := range be.required {
			if _, ok := env[k]; !ok {
				t.Errorf("%s: lacks %s, which cmd/%s requires", s.Name, k, bin)
			}
		}
		// Required in code rather than in help text.
		var also []string
		switch bin {
		case "router", "api":
			if env["MERIDIAN_JWT_SECRET"] == "" && env["MERIDIAN_JWKS_FILE"] == "" {
				t.Errorf("%s: sets neither MERIDIAN_JWT_SECRET nor MERIDIAN_JWKS_FILE; cmd/%s needs one", s.Name, bin)
			}
		case "gencompose":
			if len(s.Command) < 2 || s.Command[1] != "init" {
				t.Errorf("%s: runs gencompose %v; only `gencompose init` is a service", s.Name, s.Command[1:])
			}
		case "rebalancer":
			also = []string{"MERIDIAN_MAP_ADDRS", "MERIDIAN_CLUSTER_TOKEN"} // `status` refuses to run without them
		}
		for _, k := range also {
			if env[k] == "" {
				t.Errorf("%s: lacks %s", s.Name, k)
			}
		}
	}
	for _, bin := range []string{"router", "api", "rebalancer", "gencompose"} {
		if checked[bin] == 0 {
			t.Errorf("no compose service runs %s", bin)
		}
	}
}
