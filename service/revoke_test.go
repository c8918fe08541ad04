package service

import (
	"strings"
	"testing"
)

// TestRevokeController checks RevokeController: without a claim it is
// ErrNotController; with one, the claim ends (ManagerChanged), then the
// controller is told (ControllerReleased "revoked"), and the revoked
// controller's UnregisterController is ErrNotController. The controller
// itself may revoke its claim too.
func TestRevokeController(t *testing.T) {
	h := newHarness(t)
	h.take()
	wantKind(t, h.s.RevokeController(bg, admin), ErrNotController)
	if err := h.s.RevokeController(bg, admin); !strings.Contains(err.Error(), "no controller is registered") {
		t.Errorf("error %q does not say there is no controller", err)
	}
	sameStrings(t, "revoke without a claim", describeAll(h.take()), nil)

	if err := h.s.RegisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	h.take()
	if err := h.s.RevokeController(bg, Caller{Name: ":1.10", UID: 0}); err != nil {
		t.Fatal(err)
	}
	ns := h.take()
	sameStrings(t, "revoke", describeAll(ns), []string{
		"manager [ControlMode Controller]",
		"released " + ctlName + " /c revoked",
	})
	if m := ns[0].(ManagerChanged).Manager; m.ControlMode != ModeBuiltin || m.Controller != "" {
		t.Errorf("after revoking: mode %q controller %q", m.ControlMode, m.Controller)
	}
	if log := h.log.String(); !strings.Contains(log, "revoked by :1.10 (uid 0)") {
		t.Errorf("the log does not say who revoked the claim:\n%s", log)
	}
	wantKind(t, h.s.UnregisterController(bg, ctlr, "/c"), ErrNotController)
	wantKind(t, h.s.RevokeController(bg, admin), ErrNotController)

	// The controller revokes its own claim.
	if err := h.s.RegisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	if err := h.s.RevokeController(bg, ctlr); err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "register, revoke by the controller", describeAll(h.take()), []string{
		"manager [ControlMode Controller]", "manager [ControlMode Controller]", "released " + ctlName + " /c revoked",
	})
	// Release goes with a revocation only.
	if err := h.s.RegisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	if err := h.s.UnregisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	h.s.ControllerVanished(ctlName)
	sameStrings(t, "register, unregister", describeAll(h.take()), []string{
		"manager [ControlMode Controller]", "manager [ControlMode Controller]",
	})
}

// TestRevokeResumesThePolicy checks that the built-in policy takes over
// after a revocation as when a controller leaves: the subflows it did not
// make while controlled are made.
func TestRevokeResumesThePolicy(t *testing.T) {
	h := newHarness(t, withPolicy(PolicySubflowPerInterface))
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	if err := h.s.RegisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	h.sendNet(append(hostNet(3), synced)...)
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	err := h.s.CreateSubflow(bg, ctlr, id, SubflowRequest{LocalAddress: cli2, RemoteAddress: srvAddr, RemotePort: 8080})
	if err != nil {
		t.Fatal(err)
	}
	h.settle()
	sameStrings(t, "subflows while controlled", h.subflows(id), []string{"10.55.1.1->10.55.0.2:8080"})
	if err := h.s.RevokeController(bg, admin); err != nil {
		t.Fatal(err)
	}
	h.settle()
	sameStrings(t, "subflows after the revocation", h.subflows(id), []string{"10.55.1.1->10.55.0.2:8080", "10.55.2.1->10.55.0.2:8080"})
}
