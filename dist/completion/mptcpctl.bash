# bash completion for mptcpctl(1), the client of mptcp-pmd.
# Install as /usr/share/bash-completion/completions/mptcpctl.
#
# Connection numbers and endpoint ids are asked of the running daemon
# (mptcpctl connections --json, mptcpctl endpoints --json), waiting at most
# two seconds: a stuck daemon does not hold the shell up.

# _mptcpctl_json_numbers prints the values of a numeric member of mptcpctl's
# JSON output: _mptcpctl_json_numbers number connections.
_mptcpctl_json_numbers()
{
    mptcpctl --timeout 2s "$2" --json 2>/dev/null | sed -n "s/^ *\"$1\": *\([0-9][0-9]*\),*\$/\1/p"
}

# _mptcpctl_flag_list completes a comma-separated list of endpoint flags.
_mptcpctl_flag_list()
{
    local cur=$1 extra=$2 prefix=""
    [[ $cur == *,* ]] && prefix=${cur%,*},
    COMPREPLY=($(compgen -P "$prefix" -W "signal subflow backup fullmesh laminar $extra" -- "${cur##*,}"))
    compopt -o nospace 2>/dev/null
}

_mptcpctl()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local cmd="" sub="" npos=0 i w

    # The command, its subcommand, and how many arguments come before cur.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
        --port | --flags | --interface | --id | --local-id | --timeout | -timeout | --interval | --count | --output) ((i++)); continue ;;
        -*) continue ;;
        esac
        if [[ -z $cmd ]]; then
            cmd=$w
        elif [[ -z $sub && ($cmd == @(connection|endpoint|subflow|preference) || ($cmd == limits && $w == set)) ]]; then
            sub=$w
        else
            ((npos++))
        fi
    done

    case $prev in
    --flags) _mptcpctl_flag_list "$cur"; return ;;
    --interface) COMPREPLY=($(compgen -W "$(command ls /sys/class/net 2>/dev/null)" -- "$cur")); return ;;
    --port | --id | --local-id | --timeout | -timeout | --interval | --count) return ;;
    --output) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac

    if [[ $cur == -* ]]; then
        local opts="--json --timeout --help"
        case "$cmd $sub" in
        "endpoint add") opts+=" --port --flags --interface --id" ;;
        "connection show") opts+=" --stats" ;;
        "counters ") opts+=" --all" ;;
        "top ") opts+=" --interval --count" ;;
        "diagnose ") opts+=" --output" ;;
        "subflow add") opts+=" --backup --local-id --interface" ;;
        "announce "*) opts+=" --id" ;;
        esac
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi

    local words=""
    case "$cmd" in
    "") words="status connections connection endpoints endpoint limits preferences preference addresses counters monitor top revoke diagnose subflow announce remove help" ;;
    help) ((npos == 0)) && words="status connections connection endpoints endpoint limits preferences preference addresses counters monitor top revoke diagnose subflow announce remove help" ;;
    connection) [[ -z $sub ]] && words="show" ;;
    endpoint) [[ -z $sub ]] && words="add del set flush" ;;
    limits) [[ -z $sub ]] && words="set" ;;
    preference) [[ -z $sub ]] && words="set" ;;
    subflow) [[ -z $sub ]] && words="add del backup" ;;
    esac
    case "$cmd $sub" in
    "preference set")
        if ((npos == 0)); then
            words=$(command ls /sys/class/net 2>/dev/null)
        elif ((npos == 1)); then
            words="cheap expensive backup off default"
        fi
        ;;
    "connection show" | "subflow "?* | "announce " | "remove ")
        if ((npos == 0)); then
            words=$(_mptcpctl_json_numbers number connections)
        elif [[ $sub == backup ]] && ((npos == 3)); then
            words="on off"
        fi
        ;;
    "endpoint del" | "endpoint set")
        if ((npos == 0)); then
            words=$(_mptcpctl_json_numbers id endpoints)
        elif [[ $sub == set ]] && ((npos == 1)); then
            _mptcpctl_flag_list "$cur" none
            return
        fi
        ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
} &&
    complete -F _mptcpctl mptcpctl
