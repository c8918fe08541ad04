package dbusapi

import (
	"fmt"
	"sync"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// controllers watches the unique names of registered controllers and tells
// the backend when one leaves the bus.
//
// Each RegisterController adds one NameOwnerChanged match rule for the
// caller's name (arg0), before the name is checked, so a caller that leaves
// while registering is not missed. The rule goes again with
// UnregisterController, a failed registration, the name's departure, or the
// daemon's release of the claim.
type controllers struct {
	s    *Server
	sigs chan *dbus.Signal
	done chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	rules map[string]int // unique name -> match rules in place for it
}

func (c *controllers) start(s *Server) {
	c.s = s
	c.rules = make(map[string]int)
	c.sigs = make(chan *dbus.Signal, 64)
	c.done = make(chan struct{})
	s.conn.Signal(c.sigs)
	c.wg.Add(1)
	go c.run()
}

func (c *controllers) stop() {
	c.s.conn.RemoveSignal(c.sigs)
	close(c.done)
	c.wg.Wait()
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
	}
	return nil
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
		call := c.s.conn.Object(n.Name, path).Go(ControllerInterface+".Release", dbus.FlagNoReplyExpected, nil, n.Reason)
		if call.Err != nil {
			c.s.log.Warn("dbusapi: send Release", "controller", n.Name, "path", n.Path, "err", call.Err)
		}
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

// drop forgets up to k rules of name and returns how many it forgot.
func (c *controllers) drop(name string, k int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	k = min(k, c.rules[name])
	if c.rules[name] -= k; c.rules[name] <= 0 {
		delete(c.rules, name)
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
