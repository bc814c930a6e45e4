package journal

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
)

// The benchmarks compare the journal with plain bbolt in the same run, on the
// same disk, with 256-byte bodies (plain bbolt: 256-byte values) and fsync'd
// commits. The machine is shared and noisy, so each benchmark alternates
// between the two in ten slices and sums the time of each side; both see the
// same noise. Each reports the journal's rate, the baseline's rate and their
// ratio. Run with:
//
//	go test -run '^$' -bench . -benchtime 20000x ./journal

const benchBody = 256

func benchEntry() *Entry {
	return &Entry{Stream: "orders", Exchange: "ex", RoutingKey: "orders", Body: make([]byte, benchBody)}
}

// plainBolt writes 256-byte records under sequential 8-byte keys, perTx
// records per fsync'd Update.
type plainBolt struct {
	db  *bbolt.DB
	id  uint64
	val []byte
}

func newPlainBolt(b *testing.B) *plainBolt {
	b.Helper()
	db, err := bbolt.Open(filepath.Join(b.TempDir(), "plain.db"), 0o600, &bbolt.Options{Timeout: time.Second, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return &plainBolt{db: db, val: make([]byte, benchBody)}
}

func (p *plainBolt) write(b *testing.B, n, perTx int) {
	for n > 0 {
		k := min(n, perTx)
		n -= k
		err := p.db.Update(func(tx *bbolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			for range k {
				p.id++
				if err := bk.Put(binary.BigEndian.AppendUint64(nil, p.id), p.val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func benchJournal(b *testing.B) *Journal {
	b.Helper()
	j, err := Open(filepath.Join(b.TempDir(), "j.db"), Options{Source: "bench", MaxEntries: 1 << 30, MaxBytes: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = j.Close() })
	return j
}

// alternate runs n records through ours and the baseline in ten interleaved
// slices and reports both rates and ours/baseline.
func alternate(b *testing.B, n int, unit string, ours, base func(n int)) {
	const slices = 10
	var tOurs, tBase time.Duration
	done := 0
	b.ResetTimer()
	for s := range slices {
		k := n/slices + boolInt(s < n%slices)
		if k == 0 {
			continue
		}
		t0 := time.Now()
		base(k)
		t1 := time.Now()
		ours(k)
		t2 := time.Now()
		tBase += t1.Sub(t0)
		tOurs += t2.Sub(t1)
		done += k
	}
	b.StopTimer()
	rate, baseRate := float64(done)/tOurs.Seconds(), float64(done)/tBase.Seconds()
	b.ReportMetric(rate, "appends/s")
	b.ReportMetric(baseRate, unit)
	b.ReportMetric(rate/baseRate, "ratio")
}

func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}

// BenchmarkAppend64Concurrent: 64 goroutines each Append one entry at a
// time; the writer group-commits whatever is waiting. Baseline: plain bbolt
// with 100 records per transaction.
func BenchmarkAppend64Concurrent(b *testing.B) {
	j, p := benchJournal(b), newPlainBolt(b)
	ctx := context.Background()
	alternate(b, b.N, "bbolt100/s",
		func(n int) {
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 64 {
				wg.Go(func() {
					e := benchEntry()
					for next.Add(1) <= int64(n) {
						e.Created = time.Time{}
						if err := j.Append(ctx, e); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		},
		func(n int) { p.write(b, n, 100) })
}

// BenchmarkAppendSingle: one caller, one Append at a time (fsync-bound).
// Baseline: plain bbolt, one Update per record.
func BenchmarkAppendSingle(b *testing.B) {
	j, p := benchJournal(b), newPlainBolt(b)
	ctx := context.Background()
	e := benchEntry()
	alternate(b, b.N, "bbolt1/s",
		func(n int) {
			for range n {
				e.Created = time.Time{}
				if err := j.Append(ctx, e); err != nil {
					b.Fatal(err)
				}
			}
		},
		func(n int) { p.write(b, n, 1) })
}

// BenchmarkAppendBatch100: one caller, AppendBatch of 100 entries.
// Baseline: plain bbolt with 100 records per transaction.
func BenchmarkAppendBatch100(b *testing.B) {
	j, p := benchJournal(b), newPlainBolt(b)
	ctx := context.Background()
	es := make([]*Entry, 100)
	for i := range es {
		es[i] = benchEntry()
	}
	alternate(b, b.N, "bbolt100/s",
		func(n int) {
			for n > 0 {
				k := min(n, 100)
				n -= k
				for _, e := range es[:k] {
					e.Created = time.Time{}
				}
				if err := j.AppendBatch(ctx, es[:k]); err != nil {
					b.Fatal(err)
				}
			}
		},
		func(n int) { p.write(b, n, 100) })
}

// BenchmarkLifecycle: what the publisher asks of the journal per message, for 256 B and 4 KiB
// bodies: AppendBatch of 512, Read them back in pages of 256, Delete them, each in its own
// fsync'd commit as the publisher's appender and deleter do. "cached" serves the reads from the
// tail cache; "backlog" has no cache, as when the backlog has outgrown it and the sender reads
// from bbolt. Reports CPU µs and bytes written per message beside ns/op, for each page size.
// Baseline: plain bbolt writing the same bodies in the same transactions and deleting them.
func BenchmarkLifecycle(b *testing.B) {
	for _, size := range []int{256, 4096} {
		for _, ps := range []int{4096, 16384, 65536} {
			for _, cached := range []bool{true, false} {
				name := fmt.Sprintf("%dB/page%dK/%s", size, ps/1024, map[bool]string{true: "cached", false: "backlog"}[cached])
				b.Run(name, func(b *testing.B) {
					opts := Options{Source: "bench", PageSize: ps}
					if !cached {
						opts.TailCacheBytes = -1
					}
					j, err := Open(filepath.Join(b.TempDir(), "j.db"), opts)
					if err != nil {
						b.Fatal(err)
					}
					defer j.Close()
					ctx := context.Background()
					es := make([]*Entry, 512)
					for i := range es {
						es[i] = &Entry{Stream: "orders", Exchange: "ex", RoutingKey: "orders", Body: make([]byte, size)}
					}
					var after uint64
					ids := make([]uint64, 0, len(es))
					cpu0 := cpuTime()
					b.ResetTimer()
					for done := 0; done < b.N; done += len(es) {
						for _, e := range es {
							e.ID, e.Seq, e.Created = 0, 0, time.Time{}
						}
						if err := j.AppendBatch(ctx, es); err != nil {
							b.Fatal(err)
						}
						ids = ids[:0]
						for len(ids) < len(es) {
							page, err := j.Read(ctx, after, 256)
							if err != nil || len(page) == 0 {
								b.Fatal("read", err)
							}
							for _, e := range page {
								ids = append(ids, e.ID)
							}
							after = page[len(page)-1].ID
						}
						if err := j.Delete(ctx, ids...); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					n := (b.N + len(es) - 1) / len(es) * len(es)
					b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(n), "cpu_µs/msg")
					if fi, err := os.Stat(j.Path()); err == nil {
						b.ReportMetric(float64(fi.Size())/1e6, "file_MB")
					}
				})
			}
		}
	}
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
