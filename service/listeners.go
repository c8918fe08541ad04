package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// ListenerFactory opens a listening MPTCP socket on addr (port 0 = let the
// kernel choose). The service keeps one open behind every address it
// announces: the kernel refuses a peer's join to an announced address that
// has no listener (docs/kernel-notes.md, "Listener behind an announced address").
type ListenerFactory func(addr netip.AddrPort) (net.Listener, error)

// ListenMPTCP is the default ListenerFactory: an MPTCP TCP listener in the
// daemon's network namespace.
func ListenMPTCP(addr netip.AddrPort) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	return lc.Listen(context.Background(), "tcp", addr.String())
}

// listeners holds the listening sockets behind announced addresses, shared
// by reference count: every connection that announces the same address and
// port holds one reference. It is owned by the service loop; only the accept
// goroutines run elsewhere.
type listeners struct {
	open ListenerFactory
	log  *slog.Logger
	held map[netip.AddrPort]*heldListener
	wg   sync.WaitGroup // accept goroutines
}

type heldListener struct {
	l    net.Listener
	refs int
}

func newListeners(open ListenerFactory, log *slog.Logger) *listeners {
	return &listeners{open: open, log: log, held: make(map[netip.AddrPort]*heldListener)}
}

// acquire takes a reference on a listener for ap and returns the address
// and port it listens on, which is what must be announced. Port 0 reuses any
// listener already held on the address, or opens one on a port the kernel
// chooses. ok is false when no listener of ours stands behind the address:
// the port is in use, so some other socket already listens there (an MPTCP
// server announcing its own service port); nothing is then to be released.
func (ls *listeners) acquire(ap netip.AddrPort) (bound netip.AddrPort, ok bool, err error) {
	if h := ls.held[ap]; h != nil {
		h.refs++
		return ap, true, nil
	}
	if ap.Port() == 0 {
		for k, h := range ls.held {
			if k.Addr() == ap.Addr() {
				h.refs++
				return k, true, nil
			}
		}
	}
	l, err := ls.open(ap)
	if errors.Is(err, syscall.EADDRINUSE) && ap.Port() != 0 {
		ls.log.Debug("announced port already has a listener", "addr", ap)
		return ap, false, nil
	}
	if err != nil {
		return netip.AddrPort{}, false, err
	}
	bound, err = listenerAddr(l, ap)
	if err != nil {
		l.Close()
		return netip.AddrPort{}, false, err
	}
	if h := ls.held[bound]; h != nil { // a factory that ignores the port
		l.Close()
		h.refs++
		return bound, true, nil
	}
	ls.held[bound] = &heldListener{l: l, refs: 1}
	ls.wg.Add(1)
	go ls.discard(l)
	return bound, true, nil
}

// release drops a reference taken by acquire and closes the listener with
// the last one.
func (ls *listeners) release(ap netip.AddrPort) {
	h := ls.held[ap]
	if h == nil {
		return
	}
	if h.refs--; h.refs > 0 {
		return
	}
	delete(ls.held, ap)
	if err := h.l.Close(); err != nil {
		ls.log.Warn("closing listener", "addr", ap, "err", err)
	}
}

// closeAll closes every listener and waits for the accept goroutines.
func (ls *listeners) closeAll() {
	for ap, h := range ls.held {
		h.l.Close()
		delete(ls.held, ap)
	}
	ls.wg.Wait()
}

// discard accepts and closes connections until l is closed. The kernel
// handles a peer's MP_JOIN before accept, so what arrives here is only a new
// MPTCP connection to the announced address and port, which nobody serves.
func (ls *listeners) discard(l net.Listener) {
	defer ls.wg.Done()
	backoff := time.Millisecond
	for {
		c, err := l.Accept()
		if err == nil {
			c.Close()
			backoff = time.Millisecond
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		ls.log.Warn("accept on announced address", "addr", l.Addr(), "err", err)
		time.Sleep(backoff)
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// listenerAddr returns the address and port l listens on, in the form of
// the requested address (IPv4 stays IPv4).
func listenerAddr(l net.Listener, want netip.AddrPort) (netip.AddrPort, error) {
	var ap netip.AddrPort
	if ta, ok := l.Addr().(*net.TCPAddr); ok {
		ap = ta.AddrPort()
	} else {
		var err error
		if ap, err = netip.ParseAddrPort(l.Addr().String()); err != nil {
			return netip.AddrPort{}, fmt.Errorf("listener address %q: %w", l.Addr(), err)
		}
	}
	if want.Addr().Is4() {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return ap, nil
}
