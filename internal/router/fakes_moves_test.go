package router

import (
	"context"
	"errors"

	"github.com/meridian-dev/meridian/shardmap"
)

// errFakeNoMoves is what fakeMap's move methods answer: the move routes are tested against a
// real shard map node (admin_moves_test.go), whose FSM owns the rules.
var errFakeNoMoves = errors.New("fakeMap: no moves")

func (m *fakeMap) View() *shardmap.Map { return nil }

func (m *fakeMap) RequestMove(context.Context, string, string) (shardmap.Move, error) {
	return shardmap.Move{}, errFakeNoMoves
}

func (m *fakeMap) CancelMove(context.Context, string) (shardmap.Move, error) {
	return shardmap.Move{}, errFakeNoMoves
}
