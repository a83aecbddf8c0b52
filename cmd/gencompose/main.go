// Command gencompose renders docker-compose.multiregion.yml from the topology file, so the
// compose file and the local launcher can never disagree about regions, ports or peers.
//
//	go run ./cmd/gencompose [-topology deploy/multi-region/topology.yaml] [-out docker-compose.multiregion.yml]
//
// With -out - it writes to standard output. The output is deterministic.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/meridian-dev/meridian/internal/topology"
)

func main() {
	in := flag.String("topology", topology.DefaultPath, "topology file")
	out := flag.String("out", "docker-compose.multiregion.yml", "output file, - for standard output")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gencompose:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	topo, err := topology.Load(in)
	if err != nil {
		return err
	}
	data, err := topo.ComposeYAML()
	if err != nil {
		return err
	}
	if out == "-" {
		_, err = os.Stdout.Write(data)
		return err
	}
	return os.WriteFile(out, data, 0o644)
}
