# Helpers shared by the bench/*.sh scripts (sourced, not run).

# best / median: of the numbers on stdin, separated by spaces or newlines.
best() { tr ' ' '\n' | grep . | sort -g | head -n1; }
median() {
    tr ' ' '\n' | grep . | sort -g |
        awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# free_port: a TCP port nothing uses, below the ephemeral range.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/free-port.sh"
