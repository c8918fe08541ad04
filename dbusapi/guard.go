package dbusapi

import (
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// DefaultMaxInFlight is how many calls one sender may have in flight when
// Options.MaxInFlight is 0.
const DefaultMaxInFlight = 16

// errorInvalidArgs is the standard error for a call whose arguments do not
// have the method's signature.
const errorInvalidArgs = "org.freedesktop.DBus.Error.InvalidArgs"

var (
	messageType = reflect.TypeFor[dbus.Message]()
	senderType  = reflect.TypeFor[dbus.Sender]()
)

// inFlight counts the calls each sender has in flight.
//
// godbus runs every incoming method call in a goroutine of its own, at
// once, so without a bound one client could have any number of calls
// waiting for the bus (caller identification, polkit) or the service loop
// at the same time. With it, a call beyond the bound is answered Busy
// straight away, without being queued: a flooding client gets errors,
// everyone else is served as before. The bus adds its own bound, on the
// calls awaiting a reply per connection (max_replies_per_connection).
type inFlight struct {
	max int
	mu  sync.Mutex
	n   map[string]int // unique name -> calls in flight
}

func newInFlight(max int) *inFlight {
	if max <= 0 {
		max = DefaultMaxInFlight
	}
	return &inFlight{max: max, n: make(map[string]int)}
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
//   - the bound on calls in flight: a sender with too many gets Busy;
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
	refuse := func(derr *dbus.Error) []reflect.Value {
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
			return refuse(dbusError(fmt.Errorf("%w: too many requests in flight from %s", service.ErrBusy, sender)))
		}
		defer s.inFlight.release(sender)
		if got := msgSignature(msg); got != want {
			return refuse(dbus.NewError(errorInvalidArgs, []any{fmt.Sprintf("arguments of type %q, want %q", got, want)}))
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
