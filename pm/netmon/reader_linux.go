// This file holds the socket reader: the goroutine that receives from the
// netlink socket and sorts what it gets into listing answers and
// notifications for the owner goroutine.

package netmon

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// input is what the reader hands to the owner, in the socket's order:
// notifications, or a finished listing followed by the notifications that
// came while it ran, or the error that ended reading.
type input struct {
	events []event
	snap   *snapshot
	kind   dumpKind // of snap
	err    error
}

// read receives from the socket until the monitor stops or receiving
// fails, and hands what it got to the owner.
func (m *Monitor) read() {
	defer close(m.readerDone)
	for {
		if m.hooks.beforeReceive != nil {
			m.hooks.beforeReceive()
		}
		msgs, from, err := m.sock.Receive()
		if m.hooks.afterReceive != nil {
			m.hooks.afterReceive(msgs)
		}
		var ins []input
		switch {
		case m.stopped():
			return
		case errors.Is(err, unix.ENOBUFS):
			// Notifications were lost: list everything again.
			m.overflows.Add(1)
			if err := m.startDump(dumpAll); err != nil {
				ins = append(ins, input{err: err})
			}
		case err != nil:
			ins = append(ins, input{err: fmt.Errorf("receive: %w", err)})
		case from.Pid != 0:
			continue // not from the kernel
		default:
			ins = m.classify(msgs)
		}
		for _, in := range ins {
			select {
			case m.in <- in:
			case <-m.quit:
				return
			}
			if in.err != nil {
				return
			}
		}
	}
}

// classify sorts the messages of one receive into inputs for the owner: the
// answers to a listing go to it, notifications to the listing's held
// events while it runs, or straight on otherwise. Messages that cannot be
// decoded are skipped, as a listing would skip them.
func (m *Monitor) classify(msgs []syscall.NetlinkMessage) []input {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	d := &m.dump
	var ins []input
	var evs []event
	for _, msg := range msgs {
		h := msg.Header
		switch {
		case d.kind != dumpNone && h.Pid == m.pid && h.Seq == d.seq:
			done, err := m.answer(msg)
			if err != nil {
				return append(ins, input{events: evs}, input{err: err})
			}
			if done != nil {
				if len(evs) > 0 {
					ins = append(ins, input{events: evs})
					evs = nil
				}
				ins = append(ins, *done)
			}
		case d.kind == dumpAll && !d.started:
			// Older than the listing, which supersedes it.
		case d.kind != dumpNone && d.started:
			d.held, _ = decode(d.held, h.Type, h.Flags, msg.Data)
		default:
			evs, _ = decode(evs, h.Type, h.Flags, msg.Data)
		}
	}
	if len(evs) > 0 {
		ins = append(ins, input{events: evs})
	}
	return ins
}
