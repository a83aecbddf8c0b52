// Package systemtest holds the tenant-move system tests (issue 14, "Done when"): the launcher's
// real three-region topology (internal/sim, latency mode, ports shifted up by 5000), the move
// controller it runs (`rebalancer serve`), writers and readers through every region's router,
// and checks of the final state against every acknowledged write, the change streams of every
// region, the shard map and both shards' rows (as the Postgres superuser).
//
// The tests share one cluster (started by the first test that needs it, stopped by TestMain).
// MERIDIAN_MOVETEST_RECORDS sets the moved tenant's size (default 3000; the figure is
// 200000) and MERIDIAN_MOVETEST_ROWS_PER_SECOND the controller's backfill cap (default 500, so
// that TestMoveControllerKilled can catch the backfill).
package systemtest
