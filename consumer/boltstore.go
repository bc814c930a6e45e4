package consumer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/group"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	bolt "go.etcd.io/bbolt"
)

// BoltOptions configures OpenBoltStore. The zero value is valid.
type BoltOptions struct {
	// LockTimeout bounds the wait for the file lock held by another process. Default 5 s.
	LockTimeout time.Duration
	// MaxBatchOps caps the ops gathered into one transaction. Default 10,000.
	MaxBatchOps int
	// NoSync skips fsync on commit. Only for tests and benchmarks: a crash of the machine (not of
	// the process) may then lose committed dedup state and effects.
	NoSync bool
	// Logger receives compaction and error logs. Default slog.Default().
	Logger *slog.Logger
	// AllowReset lets OpenBoltStore start anew when the marker file <store>.id says a store
	// existed at the path but the file is missing, empty or another store (ErrTruncated without
	// it). The lost store's dedup state is gone: messages it had applied that the broker
	// redelivers are applied again. It is logged at ERROR. Set it only when that is harmless.
	AllowReset bool

	tune boltTunables // tests only
}

const defaultLockTimeout = 5 * time.Second

var _ Store[*bolt.Tx] = (*BoltStore)(nil)

var (
	// dedup.AppendKey -> updated(8) + state, as of the last fold of the log (boltlog.go)
	bucketStreams = []byte("rabbitkit.consumer.streams")
)

// BoltStore is the default Store, a Store[*bbolt.Tx] of ScopeExclusive: one bbolt file, one writer
// goroutine that groups concurrent batches into one transaction and one fsync (like DB.Batch,
// without its fixed delay). Transactional handlers (Consumer.RunTx) get the *bbolt.Tx of that
// transaction, so their writes commit atomically with the dedup state that marks the message
// handled. A commit appends its stream states to a log that the writer folds into the streams
// bucket now and then (boltlog.go: file format 2).
type BoltStore struct {
	db   *bolt.DB
	opts BoltOptions
	log  *slog.Logger

	reqs       chan *commitReq
	stop       chan struct{}
	writerDone chan struct{}
	wg         sync.WaitGroup
	closeMu    sync.Mutex
	closed     bool
	inUse      atomic.Bool // one Run at a time: the dedup window lives in that Run's memory

	w logWriter // the writer goroutine's
}

// Claim implements Store: it reserves the store for one Run, and release gives it back. Two Runs
// on one store would each classify against their own in-memory window and apply each other's
// messages again, so a second Claim while one is held returns ErrStoreInUse. (Other processes are
// kept out by the file lock taken in OpenBoltStore.)
func (s *BoltStore) Claim(ctx context.Context) (release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	if !s.inUse.CompareAndSwap(false, true) {
		return nil, ErrStoreInUse
	}
	var once sync.Once
	return func() { once.Do(func() { s.inUse.Store(false) }) }, nil
}

// Scope implements Store: ScopeExclusive. The Run's in-memory dedup window is the authority.
func (s *BoltStore) Scope() Scope { return ScopeExclusive }

func (s *BoltStore) isClosed() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

type commitReq struct {
	b    *Batch[*bolt.Tx]
	done chan error // buffered 1
}

// OpenBoltStore opens (creating if needed, mode 0600) the bbolt file at path, and the marker file
// <path>.id beside it (boltfile.go). It refuses, before bbolt maps it, a corrupt file
// (ErrCorrupt), a file lost, emptied or replaced while its marker exists (ErrTruncated, unless
// AllowReset), a bbolt file that is not a consumer store (ErrNotStore) and a file another
// process holds (ErrLocked). A brand-new or empty file without a marker becomes a new store.
func OpenBoltStore(path string, opts BoltOptions) (*BoltStore, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = defaultLockTimeout
	}
	if opts.MaxBatchOps <= 0 {
		opts.MaxBatchOps = 10000
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	db, mk, err := openBoltFile(path, opts)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*BoltStore, error) {
		_ = db.Close()
		return nil, err
	}
	id, err := identify(db, path, mk, opts)
	if err != nil {
		return fail(err)
	}
	lw, err := openFormat(db, path, opts.Logger)
	if err != nil {
		if errors.Is(err, ErrNotStore) || errors.Is(err, ErrCorrupt) {
			return fail(err)
		}
		return fail(fmt.Errorf("%w: %w", ErrStore, err))
	}
	if err := commitIdentity(db, path, id, mk, opts.Logger); err != nil {
		return fail(fmt.Errorf("%w: %w", ErrStore, err))
	}
	lw.tune = opts.tune.withDefaults()
	s := &BoltStore{db: db, opts: opts, log: opts.Logger, reqs: make(chan *commitReq, 64), stop: make(chan struct{}), writerDone: make(chan struct{}), w: lw}
	s.wg.Go(s.writer)
	return s, nil
}

// DB returns the underlying database. Prefer View (or Consumer.View) to read the effects of
// transactional handlers. Do not write to it while the store is open except through RunTx
// handlers: bbolt has one writer at a time and a long write stalls every commit.
func (s *BoltStore) DB() *bolt.DB { return s.db }

// View implements Store: fn runs in a read-only bbolt transaction, concurrently with commits.
func (s *BoltStore) View(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.isClosed() {
		return ErrClosed
	}
	return boltTx(s.db, false, true, fn)
}

// Path returns the file's path.
func (s *BoltStore) Path() string { return s.db.Path() }

// Load implements Store.
func (s *BoltStore) Load(ctx context.Context) ([]StreamState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	var out []StreamState
	err := boltView(s.db, func(tx *bolt.Tx) error {
		var err error
		out, err = loadStates(tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: load: %w", ErrStore, err)
	}
	return out, nil
}

// Commit implements Store. It returns once the batch is durable (or failed). When ctx ends first,
// Commit returns ctx's error and the batch may or may not be committed. A failed commit wraps
// ErrStore and nothing of the batch is applied. When the disk is full (ENOSPC, EDQUOT) the error
// also wraps ErrDiskFull (and so ErrStoreUnavailable), says so and names the file: Run does not
// end, it acks nothing of the batch and commits it again with backoff until there is space. A
// corrupt page met wraps ErrCorrupt too; that and other failures end Run.
func (s *BoltStore) Commit(ctx context.Context, b *Batch[*bolt.Tx]) error {
	select {
	case <-s.stop:
		return ErrClosed
	default:
	}
	r := &commitReq{b: b, done: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-s.stop:
		return ErrClosed
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	select {
	case err := <-r.done:
		return err
	case <-s.writerDone:
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed // queued after the writer's last look
		}
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Close stops the writer after the batches already submitted and closes the file. Idempotent.
func (s *BoltStore) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.stop)
	s.wg.Wait()
	return s.db.Close()
}

func (s *BoltStore) writer() {
	defer close(s.writerDone)
	for {
		select {
		case <-s.stop:
			// Answer what raced with Close rather than leave callers waiting for their ctx.
			for {
				select {
				case r := <-s.reqs:
					r.done <- ErrClosed
				default:
					return
				}
			}
		case r := <-s.reqs:
			reqs := []*commitReq{r}
			n := len(r.b.Ops)
			if n < s.opts.MaxBatchOps {
				group.Gather(s.reqs, func(r2 *commitReq) bool {
					reqs = append(reqs, r2)
					n += len(r2.b.Ops)
					return n < s.opts.MaxBatchOps
				})
			}
			err := s.apply(reqs)
			if err == nil && s.w.tune.hook != nil && s.w.foldDue() {
				_ = s.w.tune.hook("record")
			}
			for _, r := range reqs {
				r.done <- err
			}
			if err == nil {
				s.maybeFold()
			}
		}
	}
}

// errRerun rolls back an attempt in which an effect failed; apply then retries without it.
var errRerun = errors.New("consumer: rerun")

func (s *BoltStore) apply(group []*commitReq) error {
	for _, r := range group {
		for i := range r.b.Ops {
			r.b.Ops[i].Err = nil
		}
	}
	var stamp [8]byte
	binary.BigEndian.PutUint64(stamp[:], uint64(time.Now().UnixNano()))
	l := &s.w
	for {
		var logged int64
		var recs uint64
		err := boltUpdate(s.db, func(tx *bolt.Tx) error {
			for _, r := range group {
				if failed := runEffects(tx, r.b); failed {
					return errRerun
				}
			}
			l.keys, l.ents = l.keys[:0], l.ents[:0]
			for _, r := range group {
				if r.b.States == nil {
					continue
				}
				applied := make([]bool, len(r.b.Ops))
				for i := range r.b.Ops {
					applied[i] = r.b.Ops[i].Err == nil
				}
				for _, st := range r.b.States(applied) {
					off := len(l.keys)
					l.keys = dedup.AppendKey(l.keys, st.Key)
					l.ents = append(l.ents, logEnt{off: off, n: len(l.keys) - off, state: st.State})
				}
			}
			var err error
			logged, recs, err = l.logStates(tx, stamp[:])
			return err
		})
		clear(l.ents) // drop the callers' states
		if errors.Is(err, errRerun) {
			continue
		}
		if err != nil {
			return writeErr(s.Path(), "commit", err)
		}
		l.next += recs
		l.bytes += logged
		return nil
	}
}

// runEffects runs the effects of b's ops that are not excluded yet. On the first failure it sets
// Err on the failed op and on every later op of the same stream and reports true.
func runEffects[T any](tx T, b *Batch[T]) (failed bool) {
	for i := range b.Ops {
		op := &b.Ops[i]
		if op.Err != nil || op.Effect == nil {
			continue
		}
		if err := callEffect(op.Effect, tx); err != nil {
			op.Err = err
			for j := i + 1; j < len(b.Ops); j++ {
				if b.Ops[j].Key == op.Key && b.Ops[j].Err == nil {
					b.Ops[j].Err = fmt.Errorf("%w (stream %s)", ErrSkipped, op.Key)
				}
			}
			return true
		}
	}
	return false
}

func callEffect[T any](e func(T) error, tx T) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrPanic, p)
		}
	}()
	if err := e(tx); err != nil {
		return err
	}
	return nil
}
