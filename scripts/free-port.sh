# free_port: print a TCP port on which nothing is bound, in any state (sourced by
# tests/integration/lib.sh and bench/lib.sh).  Ports come from below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range): after a burst of connections thousands of
# ephemeral ports sit in TIME_WAIT, and a server cannot bind() to them (EADDRINUSE) for a
# minute.  Prints 0 when it finds none.
free_port() {
    local lo=32768 p
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    local base=10000 span=$((lo - 10000))
    if [ "$span" -lt 1000 ]; then base=20000 span=40000; fi # an unusual range: best effort
    for _ in $(seq 100); do
        p=$((base + (RANDOM * 32768 + RANDOM) % span))
        if [ -z "$(ss -tanH "( sport = :$p )" 2>/dev/null)" ]; then
            echo "$p"
            return 0
        fi
    done
    echo 0
}
