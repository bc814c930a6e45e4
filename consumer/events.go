package consumer

// eventLoop runs the user's callbacks one at a time, in order, on one goroutine, so that a slow
// callback delays only other callbacks, never handling or acking.
func (r *run) eventLoop() {
	for {
		select {
		case <-r.events.signal:
			r.runCallbacks()
		case <-r.auxStop:
			r.runCallbacks() // the workers have stopped: nothing is pushed any more
			return
		}
	}
}

func (r *run) runCallbacks() {
	for _, f := range r.events.take(0) {
		r.callback(f)
	}
}

func (r *run) callback(f func()) {
	defer func() {
		if p := recover(); p != nil {
			r.cfg.Logger.Error("consumer: callback panicked", "panic", p)
		}
	}()
	f()
}
