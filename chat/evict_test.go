package chat

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func (s *Service) convStates() int {
	n := 0
	s.convs.Range(func(_, _ any) bool { n++; return true })
	return n
}

// Per-conversation state is kept only while it is in use: a sweep drops
// the idle ones (so the map does not grow with every conversation ever
// written to), leaves one with an append in progress, and a conversation
// whose state was dropped goes on at the right seq.
func TestIdleConvStatesAreDropped(t *testing.T) {
	e := newEnv(t, nil)
	const n = 50
	for i := range n {
		if _, err := e.svc.Send(ctx, dev("alice", "phone"), SendRequest{To: fmt.Sprint("u", i), CMID: fmt.Sprint("a", i), Type: "text", Body: text("hi")}); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.svc.convStates(); got != n {
		t.Fatalf("%d states after %d conversations", got, n)
	}
	if got := e.svc.sweepConvs(time.Now().Add(-time.Hour)); got != 0 {
		t.Fatalf("dropped %d states used within the hour", got)
	}

	// A state whose lock is held (a send in progress) survives a sweep.
	held := e.svc.lockConv("app", "busy")
	if got := e.svc.sweepConvs(time.Now().Add(time.Hour)); got != n {
		t.Fatalf("dropped %d idle states, want %d", got, n)
	}
	held.mu.Unlock()
	if got := e.svc.convStates(); got != 1 || e.svc.nconvs.Load() != 1 {
		t.Fatalf("%d states (counted %d) left, want the busy one", got, e.svc.nconvs.Load())
	}

	// Conversations whose state was dropped continue at the next seq, also
	// when senders race the sweep.
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ack, err := e.svc.Send(ctx, dev("alice", "phone"), SendRequest{To: fmt.Sprint("u", i), CMID: fmt.Sprint("b", i), Type: "text", Body: text("again")})
			if err != nil || ack.Seq != 2 {
				t.Errorf("second send to u%d: %+v %v", i, ack, err)
			}
		}()
		if i%10 == 0 {
			e.svc.sweepConvs(time.Now().Add(time.Hour))
		}
	}
	wg.Wait()
}
