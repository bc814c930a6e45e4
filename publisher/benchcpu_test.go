package publisher

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuMeter measures, for one benchmark phase, the wall time, this process's CPU time and the shared
// broker's CPU time. Client CPU per message is robust against a noisy machine where msg/s is not.
type cpuMeter struct {
	brokerPID int
}

type cpuSample struct {
	wall   time.Time
	self   time.Duration
	broker time.Duration
}

// cost is what one phase used, per message.
type cost struct {
	wall, self, broker time.Duration // totals
	n                  int
}

func (c *cost) add(o cost) {
	c.wall += o.wall
	c.self += o.self
	c.broker += o.broker
	c.n += o.n
}

func (c cost) rate() float64 { return float64(c.n) / c.wall.Seconds() }

func (c cost) selfPerMsg() float64 {
	return float64(c.self.Nanoseconds()) / 1e3 / float64(max(c.n, 1))
}

func (c cost) brokerPerMsg() float64 {
	return float64(c.broker.Nanoseconds()) / 1e3 / float64(max(c.n, 1))
}

func newCPUMeter() *cpuMeter { return &cpuMeter{brokerPID: findBrokerPID()} }

func (m *cpuMeter) sample() cpuSample {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpuSample{wall: time.Now(), self: self, broker: procCPU(m.brokerPID)}
}

// measure runs fn, which handles n messages, and returns its cost.
func (m *cpuMeter) measure(n int, fn func()) cost {
	a := m.sample()
	fn()
	z := m.sample()
	return cost{wall: z.wall.Sub(a.wall), self: z.self - a.self, broker: z.broker - a.broker, n: n}
}

// findBrokerPID finds the shared broker's beam.smp (not a private test node); 0 if none.
func findBrokerPID() int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmd, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(cmd, []byte("beam.smp")) {
			continue
		}
		// A private test node (testbroker.StartNode) has its data under rabbitkit-nodes; its
		// command line does not say so, its environment does.
		env, _ := os.ReadFile(filepath.Join(d, "environ"))
		if bytes.Contains(cmd, []byte("rabbitkit-nodes")) || bytes.Contains(env, []byte("rabbitkit-nodes")) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		return pid
	}
	return 0
}

// procCPU returns utime+stime of pid from /proc (0 if unknown).
func procCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+2:]
	}
	f := strings.Fields(s) // f[0] is field 3 (state); utime and stime are fields 14 and 15
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}
