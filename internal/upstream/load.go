package upstream

// Load reports how much of region's capacity is in use: the requests in flight on the
// region's admitted nodes (healthy, breaker closed) and their capacity, MaxInFlight each. A
// region with no admitted node has capacity 0. The router sheds load by comparing the two
// (internal/router, docs/router.md "Load shedding"); Load itself never refuses anything.
func (p *Pool) Load(region string) (inFlight, capacity int) {
	ts := p.cfg.Source.Targets(region)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range ts {
		if !t.Healthy {
			continue
		}
		n := p.nodes[t.ID]
		if n == nil { // never picked: admitted, idle
			capacity += p.cfg.MaxInFlight
			continue
		}
		if n.state != Closed {
			continue
		}
		inFlight += n.inFlight
		capacity += p.cfg.MaxInFlight
	}
	return inFlight, capacity
}
