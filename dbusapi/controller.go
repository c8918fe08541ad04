package dbusapi

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// ControllerRevoker is implemented by a Backend that can end a controller's
// claim at an administrator's request (Manager.RevokeController);
// *service.Service does. The backend tells the controller (a
// service.ControllerReleased with the reason "revoked") and resumes the
// built-in policy. Without a claim the error matches
// service.ErrNotController.
type ControllerRevoker interface {
	RevokeController(ctx context.Context, c service.Caller) error
}

var _ ControllerRevoker = (*service.Service)(nil)

// controllers watches the unique names of registered controllers and tells
// the backend when one leaves the bus. It also tells the UID cache
// (inFlight.uids) of every name that leaves.
//
// Each RegisterController adds one NameOwnerChanged match rule for the
// caller's name (arg0), before the name is checked, so a caller that leaves
// while registering is not missed. The rule goes again with
// UnregisterController, a failed registration, the name's departure, or the
// daemon's release of the claim. One more rule, for as long as the server
// runs, matches every name that loses its owner (arg2 ""), for the UID
// cache.
//
// claims are the claims registered through this server, by name: the
// holder of one may give it up without being authorized again.
type controllers struct {
	s    *Server
	sigs chan *dbus.Signal
	done chan struct{}
	wg   sync.WaitGroup

	departures bool // the rule for every departure is in place

	mu     sync.Mutex
	rules  map[string]int    // unique name -> match rules in place for it
	claims map[string]string // unique name -> the path of its claim
}

// departuresTimeout bounds the calls that add and remove the match rule
// for every departure.
const departuresTimeout = 10 * time.Second

func (c *controllers) start(s *Server) {
	c.s = s
	c.rules = make(map[string]int)
	c.claims = make(map[string]string)
	c.sigs = make(chan *dbus.Signal, 256)
	c.done = make(chan struct{})
	s.conn.Signal(c.sigs)
	// Without the rule the server works, but keeps no UIDs: it asks the
	// bus at every call.
	ctx, cancel := context.WithTimeout(s.ctx, departuresTimeout)
	err := s.conn.AddMatchSignalContext(ctx, matchDepartures()...)
	cancel()
	if err != nil {
		s.log.Warn("dbusapi: cannot watch callers leaving the bus: their UIDs are asked at every call", "err", err)
	} else {
		c.departures = true
		s.inFlight.uids.keep.Store(true)
	}
	c.wg.Add(1)
	go c.run()
}

func (c *controllers) stop() {
	c.s.conn.RemoveSignal(c.sigs)
	close(c.done)
	c.wg.Wait()
	if c.departures {
		c.departures = false
		c.s.inFlight.uids.keep.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), departuresTimeout)
		defer cancel()
		if err := c.s.conn.RemoveMatchSignalContext(ctx, matchDepartures()...); err != nil {
			c.s.log.Debug("dbusapi: remove match rule", "err", err)
		}
	}
}

func (c *controllers) run() {
	defer c.wg.Done()
	for {
		select {
		case <-c.done:
			return
		case sig, ok := <-c.sigs:
			if !ok {
				return
			}
			if name, gone := nameGone(sig); gone {
				c.s.inFlight.uids.forget(name)
				c.vanished(name)
			}
		}
	}
}

// nameGone reports a NameOwnerChanged signal of the bus saying that name
// lost its owner.
func nameGone(sig *dbus.Signal) (string, bool) {
	if sig.Name != "org.freedesktop.DBus.NameOwnerChanged" || sig.Sender != "org.freedesktop.DBus" || len(sig.Body) != 3 {
		return "", false
	}
	name, ok1 := sig.Body[0].(string)
	_, ok2 := sig.Body[1].(string)
	owner, ok3 := sig.Body[2].(string)
	return name, ok1 && ok2 && ok3 && owner == ""
}

func matchName(name string) []dbus.MatchOption {
	return []dbus.MatchOption{
		dbus.WithMatchSender("org.freedesktop.DBus"),
		dbus.WithMatchObjectPath("/org/freedesktop/DBus"),
		dbus.WithMatchInterface("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(0, name),
	}
}

// matchDepartures matches every NameOwnerChanged saying that a name lost
// its owner.
func matchDepartures() []dbus.MatchOption {
	return []dbus.MatchOption{
		dbus.WithMatchSender("org.freedesktop.DBus"),
		dbus.WithMatchObjectPath("/org/freedesktop/DBus"),
		dbus.WithMatchInterface("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(2, ""),
	}
}

// register watches the caller's name, registers the claim with the backend
// and then checks that the name still has an owner.
func (c *controllers) register(caller service.Caller, path string) error {
	name := caller.Name
	c.mu.Lock()
	c.rules[name]++ // counted first: the rule's signal may come at once
	c.mu.Unlock()
	if err := c.s.conn.AddMatchSignalContext(c.s.ctx, matchName(name)...); err != nil {
		c.drop(name, 1)
		return fmt.Errorf("dbusapi: watch controller %s: %w", name, err)
	}
	if err := c.s.b.RegisterController(c.s.ctx, caller, path); err != nil {
		c.unwatch(name, 1)
		return err
	}
	var has bool
	err := c.s.conn.BusObject().CallWithContext(c.s.ctx, "org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has)
	if err == nil && !has {
		// Gone before the rule was in place, or its signal was handled
		// before the backend knew the claim: end the claim now.
		c.unwatch(name, c.count(name))
		c.s.b.ControllerVanished(name)
		return nil
	}
	c.mu.Lock()
	if c.rules[name] > 0 { // else the claim ended already (the daemon released it)
		c.claims[name] = path
	}
	c.mu.Unlock()
	return nil
}

// holds reports whether name holds the claim with path, as registered
// through this server and not ended since.
func (c *controllers) holds(name, path string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.claims[name]
	return ok && p == path
}

func (c *controllers) unregister(caller service.Caller, path string) error {
	if err := c.s.b.UnregisterController(c.s.ctx, caller, path); err != nil {
		return err
	}
	c.unwatch(caller.Name, 1)
	return nil
}

// vanished handles the departure of a watched name.
func (c *controllers) vanished(name string) {
	n := c.count(name)
	if n == 0 {
		return
	}
	c.unwatch(name, n)
	c.s.b.ControllerVanished(name)
}

// release tells a controller that the daemon ended its claim, without
// waiting for a reply, and stops watching its name.
func (c *controllers) release(n service.ControllerReleased) {
	path := dbus.ObjectPath(n.Path)
	if path.IsValid() && n.Name != "" {
		c.s.em.call(func() { // in order with the signals, and never from the service loop
			call := c.s.conn.Object(n.Name, path).Go(ControllerInterface+".Release", dbus.FlagNoReplyExpected, nil, n.Reason)
			if call.Err != nil {
				c.s.log.Warn("dbusapi: send Release", "controller", n.Name, "path", n.Path, "err", call.Err)
			}
		})
	} else {
		c.s.log.Warn("dbusapi: cannot send Release", "controller", n.Name, "path", n.Path)
	}
	// Removing the rules is a call to the bus: do not make the service wait.
	if k := c.count(n.Name); k > 0 {
		c.drop(n.Name, k)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.removeRules(n.Name, k)
		}()
	}
}

func (c *controllers) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rules[name]
}

// drop forgets up to k rules of name and returns how many it forgot. A
// claim stands on one rule: the claim of a name without rules is gone.
func (c *controllers) drop(name string, k int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	k = min(k, c.rules[name])
	if c.rules[name] -= k; c.rules[name] <= 0 {
		delete(c.rules, name)
		delete(c.claims, name)
	}
	return k
}

// unwatch removes k of the rules for name.
func (c *controllers) unwatch(name string, k int) {
	c.removeRules(name, c.drop(name, k))
}

func (c *controllers) removeRules(name string, k int) {
	for range k {
		if err := c.s.conn.RemoveMatchSignalContext(c.s.ctx, matchName(name)...); err != nil {
			c.s.log.Debug("dbusapi: remove match rule", "name", name, "err", err)
		}
	}
}
