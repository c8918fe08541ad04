package dbusapi

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// Defaults of the bounds on calls in flight (Options).
const (
	// DefaultMaxInFlight is how many calls one sender (unique bus name)
	// may have in flight when Options.MaxInFlight is 0.
	DefaultMaxInFlight = 16
	// DefaultMaxInFlightPerUID is how many calls the connections of one
	// user (UID) may have in flight together when
	// Options.MaxInFlightPerUID is 0.
	DefaultMaxInFlightPerUID = 64
	// DefaultMaxAuthChecksPerUID is how many authorization checks (polkit)
	// the calls of one user may have running at once when
	// Options.MaxAuthChecksPerUID is 0.
	DefaultMaxAuthChecksPerUID = 4
)

// maxCachedUIDs bounds the cache of the senders' UIDs. The bus bounds its
// connections (max_completed_connections, 2048 by default) and every entry
// goes when its name leaves the bus; the bound holds should departures not
// be seen. A sender beyond it is looked up at each call.
const maxCachedUIDs = 8192

// uidTimeout bounds the wait for the bus to say who a sender is.
const uidTimeout = 5 * time.Second

// errorInvalidArgs is the standard error for a call whose arguments do not
// have the method's signature.
const errorInvalidArgs = "org.freedesktop.DBus.Error.InvalidArgs"

var (
	messageType = reflect.TypeFor[dbus.Message]()
	senderType  = reflect.TypeFor[dbus.Sender]()
)

// inFlight bounds the calls in flight: per sender, per user (UID), and the
// authorization checks per user. It also keeps the senders' UIDs (uids).
//
// godbus runs every incoming method call in a goroutine of its own, at
// once, so without a bound one client could have any number of calls
// waiting for the bus (caller identification, polkit) or the service loop
// at the same time. With it, a call beyond the bound is answered Busy
// straight away, without being queued: a flooding client gets errors,
// everyone else is served as before. The bus adds its own bound, on the
// calls awaiting a reply per connection (max_replies_per_connection).
//
// One user may open many connections (the bus allows 256 per user by
// default), so the calls of all the connections of one UID are bounded
// together as well, and so are their authorization checks, each of which
// is a call to polkit that may wait for a person to type a password. Root
// (UID 0) is bounded per connection only: root is every system service at
// once, and can stop the daemon anyway.
type inFlight struct {
	max       int           // calls per sender
	maxUID    int           // calls per UID
	maxChecks int           // authorization checks per UID
	checkWait time.Duration // how long a check waits for its turn; 0: the Authorizer's timeout

	mu     sync.Mutex
	n      map[string]int         // unique name -> calls in flight
	perUID map[uint32]int         // UID -> calls in flight (not root's)
	checks map[uint32]*checkSlots // UID -> its authorization checks

	uids uidCache
}

// checkSlots are a user's authorization checks: a semaphore of
// maxChecks, and how many calls hold or wait for a slot.
type checkSlots struct {
	sem  chan struct{}
	refs int
}

func newInFlight(conn *dbus.Conn, opts Options) *inFlight {
	f := &inFlight{
		max:       opts.MaxInFlight,
		maxUID:    opts.MaxInFlightPerUID,
		maxChecks: opts.MaxAuthChecksPerUID,
		checkWait: opts.authCheckWait,
		n:         make(map[string]int),
		perUID:    make(map[uint32]int),
		checks:    make(map[uint32]*checkSlots),
		uids:      uidCache{conn: conn, m: make(map[string]*uidEntry)},
	}
	if f.max <= 0 {
		f.max = DefaultMaxInFlight
	}
	if f.maxUID <= 0 {
		f.maxUID = DefaultMaxInFlightPerUID
	}
	if f.maxChecks <= 0 {
		f.maxChecks = DefaultMaxAuthChecksPerUID
	}
	return f
}

// acquire counts a call of sender, or reports false if sender already has
// the maximum in flight.
func (f *inFlight) acquire(sender string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[sender] >= f.max {
		return false
	}
	f.n[sender]++
	return true
}

// release ends a call that acquire counted.
func (f *inFlight) release(sender string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[sender]--; f.n[sender] <= 0 {
		delete(f.n, sender)
	}
}

// acquireUID counts a call of a user, or reports false if the user's
// connections already have the maximum in flight together. Root is not
// counted.
func (f *inFlight) acquireUID(uid uint32) bool {
	if uid == 0 {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.perUID[uid] >= f.maxUID {
		return false
	}
	f.perUID[uid]++
	return true
}

// releaseUID ends a call that acquireUID counted.
func (f *inFlight) releaseUID(uid uint32) {
	if uid == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.perUID[uid]--; f.perUID[uid] <= 0 {
		delete(f.perUID, uid)
	}
}

// startCheck waits for the user's turn to have its caller authorized:
// while the user has the maximum of checks running, a check waits until
// one ends, at most as long as a check may take itself (the Authorizer's
// polkit timeout, longer for an interactive check), and gives up when ctx
// ends. It returns the function that ends the check, or nil when the
// turn did not come. Root is not bounded.
func (f *inFlight) startCheck(ctx context.Context, uid uint32, interactive bool) func() {
	if uid == 0 {
		return func() {}
	}
	f.mu.Lock()
	c := f.checks[uid]
	if c == nil {
		c = &checkSlots{sem: make(chan struct{}, f.maxChecks)}
		f.checks[uid] = c
	}
	c.refs++
	f.mu.Unlock()
	end := func() {
		<-c.sem
		f.unrefCheck(uid, c)
	}
	select {
	case c.sem <- struct{}{}:
		return end
	default:
	}
	wait := f.checkWait
	if wait <= 0 {
		wait = polkitTimeout
		if interactive {
			wait = polkitInteractiveTimeout
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case c.sem <- struct{}{}:
		return end
	case <-t.C:
	case <-ctx.Done():
	}
	f.unrefCheck(uid, c)
	return nil
}

func (f *inFlight) unrefCheck(uid uint32, c *checkSlots) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c.refs--; c.refs <= 0 && f.checks[uid] == c {
		delete(f.checks, uid)
	}
}

// uidCache keeps the UID of each sender that called, from the bus
// (GetConnectionUnixUser), so that a sender is looked up once and not at
// every call. An entry goes when the name leaves the bus (forget, from the
// NameOwnerChanged watch of controllers); without that watch (keep false)
// nothing is kept.
//
// A unique name is never reused, so an entry cannot come to describe
// another client. The entry is put in place before the bus is asked: if
// the name leaves meanwhile, forget removes the entry and the answer is not
// kept; if it left before, the bus answers that it has no owner.
type uidCache struct {
	conn *dbus.Conn
	keep atomic.Bool // departures are watched: entries may be kept

	mu sync.Mutex
	m  map[string]*uidEntry // unique name -> its UID, or the lookup under way
}

// uidEntry is a sender's UID, valid once done is closed.
type uidEntry struct {
	done chan struct{}
	uid  uint32
	err  error
}

// lookup returns the UID of a sender: from the cache, or from the bus (one
// lookup for all the calls that need it at once).
func (c *uidCache) lookup(ctx context.Context, sender string) (uint32, error) {
	c.mu.Lock()
	e, ok := c.m[sender]
	if ok {
		c.mu.Unlock()
		select {
		case <-e.done:
			return e.uid, e.err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	e = &uidEntry{done: make(chan struct{})}
	kept := c.keep.Load() && len(c.m) < maxCachedUIDs
	if kept {
		c.m[sender] = e
	}
	c.mu.Unlock()

	lctx, cancel := context.WithTimeout(ctx, uidTimeout)
	e.err = c.conn.BusObject().CallWithContext(lctx, "org.freedesktop.DBus.GetConnectionUnixUser", 0, sender).Store(&e.uid)
	cancel()
	close(e.done)
	if e.err != nil && kept {
		c.forgetEntry(sender, e) // the next call asks again
	}
	return e.uid, e.err
}

// forget removes a name's entry: the name left the bus.
func (c *uidCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, name)
}

func (c *uidCache) forgetEntry(name string, e *uidEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[name] == e {
		delete(c.m, name)
	}
}

// guardTable applies guard to every method of a method table.
func (s *Server) guardTable(methods map[string]any) map[string]any {
	out := make(map[string]any, len(methods))
	for name, fn := range methods {
		out[name] = s.guard(fn)
	}
	return out
}

// guard wraps a method of a method table (a func whose last result is
// *dbus.Error) in one that runs first, for every call:
//
//   - the bounds on calls in flight: a sender with too many gets Busy;
//     then the sender's UID (from the cache, or asked of the bus at the
//     sender's first call), and a user whose connections have too many
//     together gets Busy;
//   - a check of the call's signature against the method's: godbus converts
//     any argument that Go can convert (an int32 into a byte, a number into
//     a string), so without the check a wrongly typed call would run with
//     truncated or made-up values. A mismatch gets the standard InvalidArgs,
//     as godbus answers a call it cannot convert.
//
// The wrapper takes the dbus.Message (godbus fills it in) whether or not
// the method does.
func (s *Server) guard(fn any) any {
	fv := reflect.ValueOf(fn)
	ft := fv.Type()
	takesMsg := ft.NumIn() > 0 && ft.In(0) == messageType
	in := []reflect.Type{messageType}
	var sig strings.Builder
	for i := range ft.NumIn() {
		p := ft.In(i)
		if i > 0 || !takesMsg {
			in = append(in, p)
		}
		if p != messageType && p != senderType {
			sig.WriteString(dbus.SignatureOfType(p).String())
		}
	}
	want := sig.String()
	out := make([]reflect.Type, ft.NumOut())
	for i := range out {
		out[i] = ft.Out(i)
	}
	refuse := func(msg dbus.Message, derr *dbus.Error) []reflect.Value {
		s.forgetOwed(msg)
		res := make([]reflect.Value, len(out))
		for i, t := range out[:len(out)-1] {
			res[i] = reflect.Zero(t)
		}
		res[len(res)-1] = reflect.ValueOf(derr)
		return res
	}
	wrapper := func(args []reflect.Value) []reflect.Value {
		msg := args[0].Interface().(dbus.Message)
		sender := msgSender(msg)
		if !s.inFlight.acquire(sender) {
			return refuse(msg, dbusError(fmt.Errorf("%w: too many requests in flight from %s", service.ErrBusy, sender)))
		}
		defer s.inFlight.release(sender)
		// A sender the bus cannot identify (it left, the bus does not
		// answer) is bounded per name only; a mutating call needs its UID
		// and fails in authorize.
		if sender != "" {
			if uid, err := s.inFlight.uids.lookup(s.ctx, sender); err == nil {
				if !s.inFlight.acquireUID(uid) {
					return refuse(msg, dbusError(fmt.Errorf("%w: too many requests in flight from uid %d", service.ErrBusy, uid)))
				}
				defer s.inFlight.releaseUID(uid)
			}
		}
		if got := msgSignature(msg); got != want {
			return refuse(msg, dbus.NewError(errorInvalidArgs, []any{fmt.Sprintf("arguments of type %q, want %q", got, want)}))
		}
		if takesMsg {
			return fv.Call(args)
		}
		return fv.Call(args[1:])
	}
	return reflect.MakeFunc(reflect.FuncOf(in, out, false), wrapper).Interface()
}

// msgSignature is the signature of a message's body.
func msgSignature(msg dbus.Message) string {
	sig, _ := msg.Headers[dbus.FieldSignature].Value().(dbus.Signature)
	return sig.String()
}

// forgetOwed forgets that the server owes msg's reply (rawReplyMethods)
// when the call is refused: godbus sends errors whatever the call's
// flags, so the caller gets the refusal, and the entry would stay.
func (s *Server) forgetOwed(msg dbus.Message) {
	if w := s.em.wire; w != nil {
		w.takeOwed(msgSender(msg), msg.Serial())
	}
}
