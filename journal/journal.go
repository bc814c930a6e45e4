package journal

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Bucket and key names inside the bbolt file.
var (
	bucketMeta    = []byte("meta")
	bucketStreams = []byte("streams")
	bucketPending = []byte("pending")
	bucketParked  = []byte("parked")
	bucketSeqLog  = []byte("seqlog")
	keyFormat     = []byte("format")
	keySource     = []byte("source")
	keyEpoch      = []byte("epoch")
	keyNextID     = []byte("next_id")
	keyCounts     = []byte("counts")
)

// fileFormat is the format of the files this version writes. Format 1 (no sequence log) is
// migrated to it at Open; see seqlog.go.
const (
	fileFormat      = 2
	fileFormatNoLog = 1
)

// Journal is a durable local outbox stored in one bbolt file. All methods are
// safe for concurrent use.
type Journal struct {
	path   string
	opts   Options
	log    *slog.Logger
	source string
	epoch  int64

	dbMu     sync.RWMutex // guards db (swapped by Compact) and dbClosed; readers hold RLock
	db       *bbolt.DB
	dbClosed bool

	sendMu sync.RWMutex // guards closed and sends on reqs
	closed bool
	reqs   chan *request
	done   chan struct{} // closed when Close starts
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
	broken    atomic.Pointer[error] // set after a panic inside bbolt: every later call fails

	w  writerState // owned by the writer goroutine (and Open before it starts)
	wb batchState  // the writer's per-batch scratch space

	// seqMu guards the writer's w.seqs, wb.oldSeqs and inTx against Stats: the writer takes it
	// to change them, Stats to read them. While inTx, w.seqs holds the uncommitted batch's
	// values and wb.oldSeqs the committed ones of the streams it touched.
	seqMu sync.Mutex
	inTx  bool

	lastCompactCheck time.Time // writer-owned
	foldFailed       time.Time // writer-owned: when folding the sequence log last failed

	statMu sync.Mutex // guards pub
	pub    published

	sigMu   sync.Mutex // guards changed and space
	changed chan struct{}
	space   chan struct{}

	cache   tailCache
	commits atomic.Int64 // write transactions committed since Open
}

// counts are the persisted pending/parked totals (meta "counts").
type counts struct {
	pendingN, pendingBytes, parkedN, parkedBytes int64
}

// published is the writer's state as of the last commit, for Stats.
type published struct {
	counts
	lastID uint64
}

// Open opens or creates the journal at path. See Options for the checks made
// (lock, source, marker, file validation) and the errors returned.
func Open(path string, opts Options) (*Journal, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	f, existed, err := lockFile(path, opts.LockTimeout)
	if err != nil {
		return nil, err
	}
	// Until bbolt adopts f, a failure closes it and removes the file if this
	// call created it.
	fail := func(err error) (*Journal, error) {
		_ = f.Close()
		if !existed {
			_ = os.Remove(path)
		}
		return nil, err
	}
	// The marker is read under the lock, so a concurrent creator has either
	// finished (marker written) or not started.
	mk, err := readMarker(path)
	if err != nil {
		return fail(err)
	}
	if mk != nil && mk.Source != opts.Source {
		return fail(fmt.Errorf("%w: %s belongs to source %q, opened as %q", ErrSourceMismatch, path, mk.Source, opts.Source))
	}
	// A compaction interrupted by a crash leaves its temporary file behind;
	// we hold the lock, so nobody else is using it.
	_ = os.Remove(compactPath(path))
	fi, err := f.Stat()
	if err != nil {
		return fail(fmt.Errorf("journal: stat %s: %w", path, err))
	}
	if fi.Size() == 0 && mk != nil && !opts.AllowNewEpoch {
		return fail(fmt.Errorf("%w: %s is missing or empty but marker %s says journal epoch %d of source %q existed (set AllowNewEpoch to start a new epoch)",
			ErrTruncated, path, markerPath(path), mk.Epoch, mk.Source))
	}
	if fi.Size() > 0 {
		if err := validateFile(f, path, fi.Size()); err != nil {
			return fail(err)
		}
	}
	db, err := openBolt(path, f, opts)
	if err != nil {
		return nil, err
	}
	j := &Journal{
		path:    path,
		opts:    opts,
		log:     opts.Logger.With("journal", path),
		db:      db,
		reqs:    make(chan *request, 1024),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		space:   make(chan struct{}),
	}
	if err := j.loadIdentity(mk); err != nil {
		_ = db.Close()
		return nil, err
	}
	j.cache.init(j.w.nextID, opts.TailCacheBytes)
	j.publish()
	if err := j.maybeAutoCompact(); err != nil {
		_ = j.db.Close()
		return nil, err
	}
	j.wg.Go(j.writeLoop)
	return j, nil
}

// loadIdentity reads (or, for a new file, creates) source, epoch and the
// writer's state, and reconciles them with the marker file.
func (j *Journal) loadIdentity(mk *marker) error {
	var found bool
	var format uint64
	err := j.view(func(tx *bbolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			// A bbolt file without our meta bucket is either one whose
			// creation was interrupted (no buckets at all) or not a journal.
			if k, _ := tx.Cursor().First(); k != nil {
				return fmt.Errorf("%w: %s is a bbolt file but not a journal (bucket %q)", ErrCorrupt, j.path, k)
			}
			return nil
		}
		found = true
		var err error
		format, err = j.loadState(tx)
		return err
	})
	if err != nil {
		return err
	}
	if found && format == fileFormatNoLog {
		if err := j.migrateSeqLog(); err != nil {
			return err
		}
	}
	if !found {
		if mk != nil {
			if !j.opts.AllowNewEpoch {
				return fmt.Errorf("%w: %s holds no journal but marker %s says epoch %d of source %q existed (set AllowNewEpoch to start a new epoch)",
					ErrTruncated, j.path, markerPath(j.path), mk.Epoch, mk.Source)
			}
			j.log.Error("journal file lost or empty: STARTING A NEW EPOCH; messages journaled in the old epoch are gone",
				"old_epoch", mk.Epoch, "source", mk.Source)
		}
		return j.create()
	}
	if j.source != j.opts.Source {
		return fmt.Errorf("%w: %s belongs to source %q, opened as %q", ErrSourceMismatch, j.path, j.source, j.opts.Source)
	}
	if mk == nil {
		j.log.Warn("journal marker missing: rewriting it", "marker", markerPath(j.path), "epoch", j.epoch)
		return writeMarker(j.path, marker{Source: j.source, Epoch: j.epoch})
	}
	if mk.Epoch != j.epoch || mk.Source != j.source {
		return fmt.Errorf("%w: %s holds epoch %d of %q but marker %s says epoch %d of %q (file replaced?)",
			ErrCorrupt, j.path, j.epoch, j.source, markerPath(j.path), mk.Epoch, mk.Source)
	}
	return nil
}

func (j *Journal) create() error {
	var rb [8]byte
	for j.epoch == 0 {
		if _, err := rand.Read(rb[:]); err != nil {
			return fmt.Errorf("journal: epoch: %w", err)
		}
		j.epoch = int64(binary.BigEndian.Uint64(rb[:]) &^ (1 << 63))
	}
	j.source = j.opts.Source
	j.w = writerState{nextID: 1, seqs: map[string]int64{}}
	err := j.db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketStreams, bucketPending, bucketParked, bucketSeqLog} {
			if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
				return err
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		m := tx.Bucket(bucketMeta)
		if err := m.Put(keyFormat, u64(fileFormat)); err != nil {
			return err
		}
		if err := m.Put(keySource, []byte(j.source)); err != nil {
			return err
		}
		if err := m.Put(keyEpoch, u64(uint64(j.epoch))); err != nil {
			return err
		}
		return j.w.putMeta(m)
	})
	if err != nil {
		return mapWriteErr(j.path, err)
	}
	j.log.Info("journal created", "source", j.source, "epoch", j.epoch)
	return writeMarker(j.path, marker{Source: j.source, Epoch: j.epoch})
}

// loadState reads the writer's state and returns the file's format.
func (j *Journal) loadState(tx *bbolt.Tx) (uint64, error) {
	m := tx.Bucket(bucketMeta)
	bad := func(what string) error {
		return fmt.Errorf("%w: %s: meta %s missing or malformed", ErrCorrupt, j.path, what)
	}
	v := m.Get(keyFormat)
	if len(v) != 8 {
		return 0, bad("format")
	}
	format := binary.BigEndian.Uint64(v)
	if format != fileFormat && format != fileFormatNoLog {
		return 0, bad("format")
	}
	j.source = string(m.Get(keySource))
	v = m.Get(keyEpoch)
	if len(v) != 8 {
		return 0, bad("epoch")
	}
	j.epoch = int64(binary.BigEndian.Uint64(v))
	v = m.Get(keyNextID)
	if len(v) != 8 {
		return 0, bad("next_id")
	}
	j.w.nextID = binary.BigEndian.Uint64(v)
	v = m.Get(keyCounts)
	if len(v) != 32 {
		return 0, bad("counts")
	}
	j.w.counts = counts{
		pendingN:     int64(binary.BigEndian.Uint64(v[0:])),
		pendingBytes: int64(binary.BigEndian.Uint64(v[8:])),
		parkedN:      int64(binary.BigEndian.Uint64(v[16:])),
		parkedBytes:  int64(binary.BigEndian.Uint64(v[24:])),
	}
	if tx.Bucket(bucketStreams) == nil || tx.Bucket(bucketPending) == nil || tx.Bucket(bucketParked) == nil ||
		(format == fileFormat) != (tx.Bucket(bucketSeqLog) != nil) {
		return 0, bad("buckets")
	}
	j.w.seqs = map[string]int64{}
	err := tx.Bucket(bucketStreams).ForEach(func(k, v []byte) error {
		if len(v) != 8 {
			return bad("stream " + string(k))
		}
		j.w.seqs[string(k)] = int64(binary.BigEndian.Uint64(v))
		return nil
	})
	if err != nil {
		return 0, err
	}
	if format == fileFormatNoLog {
		j.w.log = seqLogState{}
		for s := range j.w.seqs {
			j.w.log.nameBytes += int64(len(s))
		}
		return format, nil
	}
	return format, j.loadSeqLog(tx)
}

// migrateSeqLog turns a format 1 file into format 2: an empty sequence log beside the streams
// bucket, which already holds every stream's next sequence number.
func (j *Journal) migrateSeqLog() error {
	err := j.db.Update(func(tx *bbolt.Tx) error {
		if _, err := tx.CreateBucket(bucketSeqLog); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyFormat, u64(fileFormat))
	})
	if err != nil {
		return mapWriteErr(j.path, err)
	}
	j.log.Info("journal file format upgraded", "from", fileFormatNoLog, "to", fileFormat)
	return nil
}

// view runs fn in a read transaction. A fault or panic inside bbolt (a
// corrupt page) becomes ErrCorrupt.
func (j *Journal) view(fn func(tx *bbolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: reading: %v", ErrCorrupt, j.path, p)
		}
	}()
	j.dbMu.RLock()
	defer j.dbMu.RUnlock()
	if j.dbClosed {
		return ErrClosed
	}
	err = j.db.View(fn)
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// Source returns the source name recorded in the journal.
func (j *Journal) Source() string { return j.source }

// LastID returns the highest ID ever assigned by Append or Redrive (0 for a
// new journal), as of the last commit. Every pending entry has an ID <= LastID.
func (j *Journal) LastID() uint64 {
	j.statMu.Lock()
	defer j.statMu.Unlock()
	return j.pub.lastID
}

// Epoch returns the journal's incarnation id, chosen at random (>= 1) when the
// file was created.
func (j *Journal) Epoch() int64 { return j.epoch }

// Path returns the journal file's path as given to Open.
func (j *Journal) Path() string { return j.path }

// Close stops the writer after it has answered every request already
// submitted, then closes the file. It is idempotent; later calls return the
// first call's result. Operations after Close return ErrClosed.
func (j *Journal) Close() error {
	j.closeOnce.Do(func() {
		j.sendMu.Lock()
		j.closed = true
		close(j.reqs)
		j.sendMu.Unlock()
		close(j.done)
		j.wg.Wait()
		j.dbMu.Lock()
		defer j.dbMu.Unlock()
		j.dbClosed = true
		if err := j.db.Close(); err != nil {
			j.closeErr = fmt.Errorf("journal: close %s: %w", j.path, err)
		}
	})
	return j.closeErr
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
