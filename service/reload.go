package service

import (
	"context"
	"fmt"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Reload applies a new configuration (the daemon's SIGHUP): the policy,
// the address filter, the endpoint flags, the limits and the other
// settings. An invalid configuration (Config.Validate) is an
// ErrInvalidArguments error, limits the kernel refuses an error with its
// words; either changes nothing. Otherwise
// the new configuration is in force when Reload returns: the path manager
// is checked (and set, with SetPathManager) as at start, a change of policy
// removes the endpoints the old one made, and the built-in policy
// reconciles every endpoint and connection, unless a controller holds the
// claim. Config.LogLevel is the caller's to apply.
func (s *Service) Reload(ctx context.Context, cfg Config) error {
	const op = "reload"
	if err := cfg.Validate(); err != nil {
		return &requestError{kind: ErrInvalidArguments, msg: op + ": " + err.Error(), cause: err}
	}
	pol, err := policy.New(cfg.Policy)
	if err != nil {
		return &requestError{kind: ErrInvalidArguments, msg: op + ": " + err.Error(), cause: err}
	}
	return do(ctx, s, op, func() error {
		if l := cfg.Limits; l != nil {
			if err := s.k.SetLimits(pm.Limits(*l)); err != nil {
				return wrapErr(op, fmt.Errorf("limits: %w", err))
			}
		}
		old := s.cfg
		s.cfg = cfg
		s.refreshPathManager()
		s.refreshLimits()
		if old.Policy != cfg.Policy {
			s.log.Info("policy changed", "from", old.Policy, "to", cfg.Policy)
			s.removeOwnedEndpoints()
			s.pol = pol
			s.publishManager("Policy")
		}
		s.usesHandover = s.handoverInUse()
		s.checkPathManager()
		if old.NetworkManager != cfg.NetworkManager {
			s.nmChanged() // updates and reconciles
		} else {
			s.updateUsable()
			s.reconcile()
		}
		s.publishPreferences()
		s.log.Info("configuration reloaded", "policy", cfg.Policy)
		return nil
	})
}
