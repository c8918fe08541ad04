package dbusapi

import (
	"context"
	"fmt"

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

// rootOnly is the default Authorizer: UID 0 only.
type rootOnly struct{}

func (rootOnly) Authorize(_ context.Context, sender string, uid uint32, _ bool) error {
	if uid == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s (uid %d) is not privileged", service.ErrPermissionDenied, sender, uid)
}
