package history

// Classify turns an answer into an Outcome, conservatively: Fail only where the contract
// (DESIGN.md §4–§8, docs/api.md, docs/router.md) guarantees the request was not applied, and
// Unknown wherever it may have been. status 0 means no answer (a timeout, a cut connection);
// problem is the problem+json type slug (the last path segment of `type`), or "".
//
//   - 2xx and 304: OK.
//   - 4xx: Fail. Bad input is refused before any write and never partially applied (§4); 412,
//     409 and 422 are decided inside the write's transaction, which then rolls back (the
//     idempotency key with it); 421 is refused before the write; 429 and 408 never reach an
//     API node. 499 is only ever logged by a server, so a client that reads it gets Unknown.
//   - 503 tenant-fenced: Fail (the fence is checked inside the write's own transaction, and a
//     write the router held past its hold time was never released). 503 overloaded: Fail (shed
//     before any upstream work).
//   - Any other 5xx, and no answer: Unknown. A generic 503 may come from a connection that
//     failed during COMMIT; 500, 502 and 504 say nothing about the write.
func Classify(status int, problem string) Outcome {
	switch {
	case status == 0:
		return Unknown
	case status >= 200 && status < 300, status == 304:
		return OK
	case status == 499:
		return Unknown
	case status >= 400 && status < 500:
		return Fail
	case status == 503 && (problem == "tenant-fenced" || problem == "overloaded"):
		return Fail
	default:
		return Unknown
	}
}
