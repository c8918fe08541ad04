package dbusapi

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// DefaultSignalQueue is how many signals other than PropertiesChanged may
// wait to be sent when Options.SignalQueue is 0.
const DefaultSignalQueue = 4096

// emitter sends the signals that Publish queues, from its own goroutine,
// so that the service loop never waits for the bus: dbus-daemon stops
// reading a sender whose signals wait in the queue of a client that does
// not read (max_incoming_bytes), and a write to it then blocks.
//
// The queue is bounded. PropertiesChanged of one object and interface are
// merged while they wait (the newest value of each property wins), so they
// take at most one entry per object. Other signals (InterfacesAdded and
// Removed, the Connection signals, Release calls) beyond the bound are
// dropped and counted; the mirror, which Get, GetAll and GetManagedObjects
// read, stays right, so a client that re-reads is right again.
//
// The queue holds its entries by value and PropertiesChanged merge through
// their index in it: queueing a signal allocates nothing but what the
// caller made (its arguments), which matters at 7 signals a connection.
type emitter struct {
	conn    *dbus.Conn
	wire    *wireConn   // nil: every signal goes through godbus
	buf     []byte      // run's: signals encoded, not yet written
	pending []*outgoing // run's: the signals in buf (entries of its batch)
	log     *slog.Logger
	max     int

	mu      sync.Mutex
	queue   []outgoing                              // in the order they were queued
	waiting map[propKey]int                         // queued PropertiesChanged by object and interface: their index in queue
	events  int                                     // queued entries that are not PropertiesChanged
	wake    chan struct{}                           // capacity 1: the queue is not empty
	done    chan struct{}                           // closed by stop
	stopped chan struct{}                           // closed when run has returned
	warned  time.Time                               // last warning about drops
	dropped atomic.Uint64                           // signals dropped for a full queue
	sent    atomic.Uint64                           // signals sent
	unsent  atomic.Int64                            // queued, not yet sent (flush)
	busy    atomic.Int64                            // UnixNano when the send under way began; 0 when idle
	onSent  func(path dbus.ObjectPath, name string) // tests: after each send
	// lookup returns a connection of the mirror, for changedConn's
	// signals.
	lookup func(id uint64) (service.Connection, bool)
}

// propKey identifies the PropertiesChanged of an object's interface.
type propKey struct {
	path  dbus.ObjectPath
	iface string
}

// outgoing is one queued signal or call.
type outgoing struct {
	path    dbus.ObjectPath
	name    string // interface.member
	args    []any
	changed map[string]dbus.Variant // PropertiesChanged: the changed properties, merged
	iface   string                  // PropertiesChanged: the interface
	call    func()                  // a call to make instead of a signal (Release)
	// A connection's PropertiesChanged (changedConn): the connection and
	// its changed properties, merged; the values are the mirror's when
	// the signal is sent.
	conn uint64
	mask connPropMask
	// A subflow signal (subflowSignal): its body.
	sub   subflowSig
	isSub bool
}

func newEmitter(conn *dbus.Conn, log *slog.Logger, max int, lookup func(id uint64) (service.Connection, bool)) *emitter {
	if max <= 0 {
		max = DefaultSignalQueue
	}
	e := &emitter{
		conn:    conn,
		wire:    wireOf(conn),
		log:     log,
		max:     max,
		waiting: make(map[propKey]int),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
		lookup:  lookup,
	}
	go e.run()
	return e
}

// signal queues a signal; it never blocks.
func (e *emitter) signal(path dbus.ObjectPath, name string, args ...any) {
	e.push(outgoing{path: path, name: name, args: args})
}

// subflowSignal queues the subflow signal name with body x; it never
// blocks, and allocates nothing.
func (e *emitter) subflowSignal(path dbus.ObjectPath, name string, x subflowSig) {
	e.push(outgoing{path: path, name: name, sub: x, isSub: true})
}

// call queues a call (a method call without reply) to make in order with
// the signals; it never blocks.
func (e *emitter) call(fn func()) { e.push(outgoing{call: fn}) }

// changed queues a PropertiesChanged, merged into one that still waits for
// the same object and interface. It takes props: the caller makes a new
// map for each call and does not touch it afterwards (a merge writes into
// the map that waits).
func (e *emitter) changed(path dbus.ObjectPath, iface string, props map[string]dbus.Variant) {
	if len(props) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if i, ok := e.waiting[propKey{path, iface}]; ok {
		w := e.queue[i].changed
		for k, v := range props {
			w[k] = v
		}
		return
	}
	e.waiting[propKey{path, iface}] = len(e.queue)
	e.queue = append(e.queue, outgoing{path: path, name: propertiesChanged, iface: iface, changed: props})
	e.unsent.Add(1)
	e.kick()
}

// changedConn queues a PropertiesChanged of the properties in mask of
// connection id's object at path, merged into one that still waits. The
// signal carries the values the mirror has when it is sent (lookup), the
// newest, as a merge would; it is not sent if the connection is gone by
// then (its InterfacesRemoved follows). Queueing allocates nothing.
func (e *emitter) changedConn(path dbus.ObjectPath, id uint64, mask connPropMask) {
	if mask == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if i, ok := e.waiting[propKey{path, ConnectionInterface}]; ok {
		e.queue[i].mask |= mask
		return
	}
	e.waiting[propKey{path, ConnectionInterface}] = len(e.queue)
	e.queue = append(e.queue, outgoing{path: path, name: propertiesChanged, iface: ConnectionInterface, conn: id, mask: mask})
	e.unsent.Add(1)
	e.kick()
}

// propertiesChanged is the PropertiesChanged signal's full name.
const propertiesChanged = propertiesInterface + ".PropertiesChanged"

func (e *emitter) push(o outgoing) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.events >= e.max {
		n := e.dropped.Add(1)
		if now := time.Now(); now.Sub(e.warned) > 10*time.Second {
			e.warned = now
			e.log.Warn("dbusapi: signals dropped: the bus does not take them as fast as they come "+
				"(a client that does not read?); properties stay right for clients that re-read",
				"queued", e.events, "dropped_total", n)
		}
		return
	}
	e.events++
	e.queue = append(e.queue, o)
	e.unsent.Add(1)
	e.kick()
}

// kick wakes run. e.mu is held.
func (e *emitter) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// run sends what is queued, in order, until stop.
func (e *emitter) run() {
	defer close(e.stopped)
	var batch []outgoing
	for {
		select {
		case <-e.done:
			return
		case <-e.wake:
		}
		e.mu.Lock()
		if cap(batch) > shrinkAbove {
			batch = nil // a burst's queue: do not keep it
		}
		batch, e.queue = e.queue, batch[:0]
		// What waited is being sent: later changes queue anew. Maps keep
		// their size after a clear: after a burst, a new one.
		if len(e.waiting) > shrinkAbove {
			e.waiting = make(map[propKey]int)
		} else {
			clear(e.waiting)
		}
		e.events = 0
		e.mu.Unlock()
		for i := range batch {
			select {
			case <-e.done:
				return
			default:
			}
			e.send(&batch[i])
		}
		e.write()    // before the batch's entries are cleared: pending points into it
		clear(batch) // what the signals held is garbage now
		if e.idle() {
			// A burst, if any, is over: its buffers are not kept.
			if cap(batch) > keepIdle {
				batch = nil
			}
			if cap(e.pending) > keepIdle {
				e.pending = nil
			}
			if cap(e.buf) > keepIdleBytes {
				e.buf = nil
			}
		}
	}
}

// keepIdle and keepIdleBytes bound the queue's slices (entries) and the
// write buffer (bytes) the emitter keeps while nothing waits: a burst of
// signals grows them to thousands of entries and a write batch, which
// would otherwise stay on the heap, and resident, after the burst.
const (
	keepIdle      = 64
	keepIdleBytes = 16 << 10
)

// idle reports whether nothing waits to be sent, and then drops a large
// empty queue.
func (e *emitter) idle() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.queue) != 0 {
		return false
	}
	if cap(e.queue) > keepIdle {
		e.queue = nil
	}
	return true
}

// shrinkAbove is the number of entries above which run drops the queue's
// slice and map once they are empty, rather than keep a burst's size.
const shrinkAbove = 1024

// writeBatch is how many bytes of encoded signals run writes at once at
// most.
const writeBatch = 64 << 10

// send makes one signal or call: a signal is encoded into e.buf, for
// write, or, when that cannot be, sent through godbus.
func (e *emitter) send(o *outgoing) {
	if o.call != nil {
		e.write() // what was queued before the call goes first
		e.busy.Store(time.Now().UnixNano())
		o.call()
		e.busy.Store(0)
		e.unsent.Add(-1)
		return
	}
	var c service.Connection
	if o.mask != 0 {
		var ok bool
		if c, ok = e.lookup(o.conn); !ok {
			e.done1(o) // gone: its InterfacesRemoved follows
			return
		}
	}
	if e.wire != nil {
		iface, member := splitName(o.name)
		h := header{typ: dbus.TypeSignal, serial: e.wire.serials.GetSerial(), path: o.path, iface: iface, member: member}
		var err error
		switch {
		case o.isSub:
			e.buf, err = appendSubflowSignal(e.buf, h, &o.sub)
		case o.mask != 0:
			e.buf, err = appendConnChanged(e.buf, h, &c, o.mask)
		case o.changed != nil:
			e.buf, err = appendPropertiesChanged(e.buf, h, o.iface, o.changed)
		default:
			e.buf, err = appendMessage(e.buf, h, o.args...)
		}
		if err == nil {
			e.pending = append(e.pending, o)
			if len(e.buf) >= writeBatch {
				e.write()
			}
			return
		}
		if !errors.Is(err, errWireType) {
			e.log.Warn("dbusapi: emit signal", "path", o.path, "signal", o.name, "err", err)
			e.done1(o)
			return
		}
		e.write() // in order
	}
	args := o.args
	switch {
	case o.isSub:
		args = o.sub.args()
	case o.mask != 0:
		args = []any{o.iface, connectionPropsNamed(c, o.mask.names()), []string{}}
	case o.changed != nil:
		args = []any{o.iface, o.changed, []string{}}
	}
	e.busy.Store(time.Now().UnixNano())
	if err := e.conn.Emit(o.path, o.name, toGodbus(args)...); err != nil {
		e.log.Warn("dbusapi: emit signal", "path", o.path, "signal", o.name, "err", err)
	}
	e.done1(o)
	e.busy.Store(0)
}

// write writes the signals encoded in e.buf, in one write.
func (e *emitter) write() {
	if len(e.buf) == 0 {
		return
	}
	e.busy.Store(time.Now().UnixNano())
	if err := e.wire.write(e.buf); err != nil {
		e.log.Warn("dbusapi: emit signals", "signals", len(e.pending), "err", err)
	}
	for i, o := range e.pending {
		e.done1(o)
		e.pending[i] = nil
	}
	e.busy.Store(0)
	e.pending = e.pending[:0]
	if cap(e.buf) > 4*writeBatch {
		e.buf = nil // a large GetManagedObjects-sized burst: do not keep it
	} else {
		e.buf = e.buf[:0]
	}
}

// done1 accounts for a signal sent (or given up).
func (e *emitter) done1(o *outgoing) {
	e.sent.Add(1)
	e.unsent.Add(-1)
	if e.onSent != nil {
		e.onSent(o.path, o.name)
	}
}

// splitName splits "interface.member".
func splitName(name string) (iface, member string) {
	i := strings.LastIndexByte(name, '.')
	return name[:i], name[i+1:]
}

// stalled returns how long the send under way has been waiting for the
// bus, or 0.
func (e *emitter) stalled() time.Duration {
	if t := e.busy.Load(); t != 0 {
		return time.Since(time.Unix(0, t))
	}
	return 0
}

// stop ends run, waiting at most wait for a send under way: what is still
// queued then is not sent.
func (e *emitter) stop(wait time.Duration) {
	select {
	case <-e.done:
	default:
		close(e.done)
	}
	select {
	case <-e.stopped:
	case <-time.After(wait):
		e.log.Warn("dbusapi: a signal was still being sent at shutdown: the bus does not read", "waited", wait)
	}
}

// flush waits until everything queued so far is sent, or timeout; tests
// and Close use it.
func (e *emitter) flush(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if e.unsent.Load() == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}
