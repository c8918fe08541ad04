package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/user"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// Authorizer decides whether a caller may use the mutating methods. It
// returns nil to allow, or an error: one wrapping service.ErrPermissionDenied
// for a refusal, anything else for a failure to decide. interactive is true
// when the caller allowed interactive authorization (the message flag
// ALLOW_INTERACTIVE_AUTHORIZATION).
type Authorizer interface {
	Authorize(ctx context.Context, sender string, uid uint32, interactive bool) error
}

// MethodAuthorizer is an Authorizer that is also told which method the
// caller calls (the member name, e.g. "RevokeController"). The Server calls
// AuthorizeMethod instead of Authorize when its Authorizer has it.
//
// A refusal of a caller that could authenticate, when interactive is
// false, should wrap ErrInteractiveAuthorizationRequired: the caller is then
// answered org.freedesktop.DBus.Error.InteractiveAuthorizationRequired and
// may call again allowing interaction.
type MethodAuthorizer interface {
	Authorizer
	AuthorizeMethod(ctx context.Context, method, sender string, uid uint32, interactive bool) error
}

// rootOnly is the default Authorizer: UID 0 only.
type rootOnly struct{}

func (rootOnly) Authorize(_ context.Context, sender string, uid uint32, _ bool) error {
	if uid == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s (uid %d) is not privileged", service.ErrPermissionDenied, sender, uid)
}

// PolkitAction is the polkit action a caller needs for the mutating methods
// (RevokeController included) when it is neither root nor in an allowed
// group.
const PolkitAction = "org.mptcp.pathmanager1.control"

// PolkitDetailMethod is the key of the detail that names the method called
// (e.g. "RevokeController") in the checks of AuthorizeMethod: a polkit rule
// reads it with action.lookup("method"), for example to let a group
// control paths but not revoke another controller's claim.
const PolkitDetailMethod = "method"

// polkit's authority on the bus.
const (
	polkitName   = "org.freedesktop.PolicyKit1"
	polkitPath   = dbus.ObjectPath("/org/freedesktop/PolicyKit1/Authority")
	polkitMethod = "org.freedesktop.PolicyKit1.Authority.CheckAuthorization"

	// polkitAllowUserInteraction is CheckAuthorization's flag for an
	// authentication dialog.
	polkitAllowUserInteraction uint32 = 1
)

// How long to wait for polkit: an interactive check waits for a person to
// type a password.
const (
	polkitTimeout            = 5 * time.Second
	polkitInteractiveTimeout = 25 * time.Second
)

// AuthOptions configure the Authorizer of NewAuthorizer.
type AuthOptions struct {
	// Groups whose members may call the mutating methods, by name or
	// number (gid). A name is looked up at each check, so a group made
	// after the daemon started counts.
	Groups []string
	// Logger receives what the Authorizer cannot tell the caller (polkit
	// unreachable, a group that does not exist). nil means slog.Default().
	Logger *slog.Logger
}

// NewAuthorizer returns the daemon's Authorizer, which asks the bus of conn
// about callers. It allows, in this order:
//
//   - UID 0;
//   - a caller whose process is in one of opts.Groups, as a primary or
//     supplementary group: the groups the bus read from the caller's socket
//     (GetConnectionCredentials' UnixGroupIDs) or, from a bus that does not
//     say, the groups of the caller's user;
//   - a caller polkit authorizes for PolkitAction: CheckAuthorization with
//     the caller's bus name as the subject, allowing user interaction only
//     when the caller allowed interactive authorization, and (from
//     AuthorizeMethod) the method's name as the detail PolkitDetailMethod.
//
// Everyone else is refused with an error wrapping
// service.ErrPermissionDenied, and so is everyone else when polkit cannot
// be asked (not installed, not running, an error or no answer in time).
// When polkit would authorize the caller after authentication (a
// challenge) but the call did not allow interaction, the refusal wraps
// ErrInteractiveAuthorizationRequired.
// Nothing is cached: polkit has its own cache, and the rest is cheap.
func NewAuthorizer(conn *dbus.Conn, opts AuthOptions) *BusAuthorizer {
	a := &BusAuthorizer{conn: conn, log: opts.Logger}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.SetGroups(opts.Groups)
	return a
}

// BusAuthorizer is NewAuthorizer's Authorizer. It is safe for concurrent
// use.
type BusAuthorizer struct {
	conn   *dbus.Conn
	groups atomic.Pointer[[]string] // the allowed groups
	log    *slog.Logger

	polkitFailed atomic.Bool // a failure to ask polkit was logged at Warn
}

// SetGroups replaces the allowed groups (AuthOptions.Groups), as a
// configuration reload does; checks from then on use the new ones.
func (a *BusAuthorizer) SetGroups(groups []string) {
	g := slices.Clone(groups)
	for _, name := range g {
		if _, err := lookupGroup(name); err != nil {
			a.log.Warn("dbusapi: an allowed group does not exist (yet)", "group", name, "err", err)
		}
	}
	a.groups.Store(&g)
}

// Authorize implements Authorizer: AuthorizeMethod without a method name.
func (a *BusAuthorizer) Authorize(ctx context.Context, sender string, uid uint32, interactive bool) error {
	return a.AuthorizeMethod(ctx, "", sender, uid, interactive)
}

// AuthorizeMethod implements MethodAuthorizer. A method name that is not
// "" goes to polkit as the detail PolkitDetailMethod.
func (a *BusAuthorizer) AuthorizeMethod(ctx context.Context, method, sender string, uid uint32, interactive bool) error {
	if uid == 0 {
		return nil
	}
	if groups := *a.groups.Load(); len(groups) > 0 {
		gid, ok, err := a.inGroup(ctx, groups, sender, uid)
		if err != nil {
			a.log.Warn("dbusapi: cannot read the caller's groups", "sender", sender, "uid", uid, "err", err)
		}
		if ok {
			a.log.Debug("dbusapi: caller allowed by its group", "sender", sender, "uid", uid, "gid", gid)
			return nil
		}
	}
	return a.polkit(ctx, method, sender, uid, interactive)
}

// inGroup reports whether the caller is in one of the allowed groups, and
// which.
func (a *BusAuthorizer) inGroup(ctx context.Context, groups []string, sender string, uid uint32) (uint32, bool, error) {
	var creds map[string]dbus.Variant
	err := a.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionCredentials", 0, sender).Store(&creds)
	if err != nil {
		return 0, false, fmt.Errorf("dbusapi: credentials of %s: %w", sender, err)
	}
	gids, err := callerGroups(creds, uid)
	if err != nil {
		return 0, false, err
	}
	for _, g := range groups {
		gid, err := lookupGroup(g)
		if err != nil {
			continue // warned about at start
		}
		if slices.Contains(gids, gid) {
			return gid, true, nil
		}
	}
	return 0, false, nil
}

// callerGroups returns the caller's groups: UnixGroupIDs from its
// credentials (dbus-daemon 1.11 and later, from the kernel's view of the
// process), or else the groups of its user, which must be uid.
func callerGroups(creds map[string]dbus.Variant, uid uint32) ([]uint32, error) {
	if v, ok := creds["UnixGroupIDs"]; ok {
		gids, ok := v.Value().([]uint32)
		if !ok {
			return nil, fmt.Errorf("dbusapi: UnixGroupIDs of type %s", v.Signature())
		}
		return gids, nil
	}
	if v, ok := creds["UnixUserID"]; ok {
		if u, _ := v.Value().(uint32); u != uid {
			return nil, fmt.Errorf("dbusapi: the bus says uid %d, the caller was uid %d", u, uid)
		}
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return nil, fmt.Errorf("dbusapi: groups of uid %d: %w", uid, err)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("dbusapi: groups of %s: %w", u.Username, err)
	}
	gids := make([]uint32, 0, len(ids))
	for _, id := range ids {
		if g, err := strconv.ParseUint(id, 10, 32); err == nil {
			gids = append(gids, uint32(g))
		}
	}
	return gids, nil
}

// lookupGroup returns the gid of a group given by number or name.
func lookupGroup(g string) (uint32, error) {
	if n, err := strconv.ParseUint(g, 10, 32); err == nil {
		return uint32(n), nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(grp.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %s has gid %q", g, grp.Gid)
	}
	return uint32(n), nil
}

// polkitSubject is CheckAuthorization's subject, (sa{sv}).
type polkitSubject struct {
	Kind    string
	Details map[string]dbus.Variant
}

// polkitResult is CheckAuthorization's result, (bba{ss}).
type polkitResult struct {
	Authorized bool
	Challenge  bool
	Details    map[string]string
}

// polkit asks polkit whether the caller may perform PolkitAction, for the
// method (a detail, unless "").
//
// polkit answers (is_authorized, is_challenge): authorized; or not, but it
// would be after the caller authenticates (a challenge: auth_admin and
// the like). A challenge to a call that did not allow interaction is
// ErrInteractiveAuthorizationRequired, so that the client may ask again
// with the flag; to one that did, polkit has already tried (no agent, or
// the person gave up) and it is a refusal.
func (a *BusAuthorizer) polkit(ctx context.Context, method, sender string, uid uint32, interactive bool) error {
	flags, timeout := uint32(0), polkitTimeout
	if interactive {
		flags, timeout = polkitAllowUserInteraction, polkitInteractiveTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	subject := polkitSubject{Kind: "system-bus-name", Details: map[string]dbus.Variant{"name": dbus.MakeVariant(sender)}}
	details := map[string]string{}
	if method != "" {
		details[PolkitDetailMethod] = method
	}
	var r polkitResult
	err := a.conn.Object(polkitName, polkitPath).CallWithContext(ctx, polkitMethod, 0,
		subject, PolkitAction, details, flags, "").Store(&r)
	if err != nil {
		a.polkitUnavailable(err)
		return fmt.Errorf("%w: %s (uid %d) is not root and not in an allowed group, and polkit could not be asked: %v",
			service.ErrPermissionDenied, sender, uid, err)
	}
	if r.Authorized {
		return nil
	}
	if r.Challenge && !interactive {
		return fmt.Errorf("%w: %s (uid %d) needs to authenticate for %s: call again allowing interactive authorization",
			ErrInteractiveAuthorizationRequired, sender, uid, PolkitAction)
	}
	return fmt.Errorf("%w: polkit does not authorize %s (uid %d) for %s", service.ErrPermissionDenied, sender, uid, PolkitAction)
}

// polkitUnavailable logs a failure to ask polkit: the first at Warn, the
// rest at Debug.
func (a *BusAuthorizer) polkitUnavailable(err error) {
	msg := "dbusapi: cannot ask polkit: only root and the allowed groups may make changes"
	var de dbus.Error
	if errors.As(err, &de) && (de.Name == "org.freedesktop.DBus.Error.ServiceUnknown" || de.Name == "org.freedesktop.DBus.Error.NameHasNoOwner") {
		msg = "dbusapi: polkit is not available: only root and the allowed groups may make changes"
	}
	if a.polkitFailed.CompareAndSwap(false, true) {
		a.log.Warn(msg, "err", err)
		return
	}
	a.log.Debug(msg, "err", err)
}
