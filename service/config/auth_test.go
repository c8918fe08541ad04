package config

import (
	"slices"
	"strings"
	"testing"
)

func TestConfigAuthorization(t *testing.T) {
	cfg, err := parse("a.toml", "[authorization]\ngroups = [\"mptcp-admin\", 100, \"27\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"mptcp-admin", "100", "27"}; !slices.Equal(cfg.AuthGroups, want) {
		t.Errorf("AuthGroups = %q, want %q", cfg.AuthGroups, want)
	}
	if cfg, err := parse("a.toml", ""); err != nil || cfg.AuthGroups != nil {
		t.Errorf("without [authorization]: AuthGroups = %q, %v; want none", cfg.AuthGroups, err)
	}
	if cfg, err := parse("a.toml", "[authorization]\ngroups = []\n"); err != nil || len(cfg.AuthGroups) != 0 {
		t.Errorf("empty groups: AuthGroups = %q, %v; want none", cfg.AuthGroups, err)
	}

	for _, tc := range []struct{ data, want string }{
		{"[authorization]\ngroups = \"wheel\"\n", "a.toml:2: authorization.groups"},
		{"[authorization]\n\ngroups = [\"\"]\n", `a.toml:3: authorization.groups: bad group name ""`},
		{"[authorization]\ngroups = [\"a b\"]\n", `bad group name "a b"`},
		{"[authorization]\ngroups = [\"a:b\"]\n", `bad group name "a:b"`},
		{"[authorization]\ngroups = [-1]\n", "bad gid -1"},
		{"[authorization]\ngroups = [4294967295]\n", "bad gid 4294967295"},
		{"[authorization]\ngroups = [true]\n", "found bool"},
		{"[authorization]\nusers = [\"root\"]\n", "a.toml:2: unknown key authorization.users"},
	} {
		_, err := parse("a.toml", tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error containing %q", tc.data, err, tc.want)
		}
	}
}
