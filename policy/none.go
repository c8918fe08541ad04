package policy

// NameNone is the name of the policy that does nothing.
const NameNone = "none"

func init() { Register(NameNone, func() Policy { return none{} }) }

// none observes only: the daemon publishes state and takes requests, and
// never acts on its own.
type none struct{}

func (none) Name() string                         { return NameNone }
func (none) PathManager() string                  { return "" }
func (none) Endpoints(View) []Action              { return nil }
func (none) Connection(View, Connection) []Action { return nil }
