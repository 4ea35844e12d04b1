#!/bin/bash
# The main job: build vmexport and run vmexportd on a demo set-up.
#
# Everything lives in $VMEXPORT_DEMO_DIR (default /var/tmp/vmexport-demo): a reflink XFS
# filesystem in a loop file (when run as root; a plain directory otherwise) holding one demo VM,
# a self-signed certificate, a users file with the demo user (demo / demo), the SQLite catalog
# and the JWT key.  The daemon listens on https://127.0.0.1:$VMEXPORT_DEMO_PORT (default 5544)
# until Ctrl-C.  A second run skips apt (install-deps.sh's stamp) and rebuilds only what
# changed (ninja).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
scripts/install-deps.sh
scripts/build.sh build

DEMO=${VMEXPORT_DEMO_DIR:-/var/tmp/vmexport-demo}
PORT=${VMEXPORT_DEMO_PORT:-5544}
mkdir -p "$DEMO"
VMS=$DEMO/vms
dev=""
cleanup() {
    if mountpoint -q "$VMS" 2>/dev/null; then umount "$VMS"; fi
    if [ -n "$dev" ]; then losetup -d "$dev"; fi
}
trap cleanup EXIT
mkdir -p "$VMS"
if [ "$(id -u)" = 0 ] && ! mountpoint -q "$VMS"; then
    [ -f "$DEMO/xfs.img" ] || { truncate -s 2G "$DEMO/xfs.img" && mkfs.xfs -q -m reflink=1 "$DEMO/xfs.img"; }
    dev=$(losetup -f --show "$DEMO/xfs.img")
    mount "$dev" "$VMS"
    echo "demo VMs on a reflink XFS at $VMS"
fi

if [ ! -d "$VMS/demo-vm" ]; then
    mkdir -p "$VMS/demo-vm"
    truncate -s 1G "$VMS/demo-vm/root.img"
    dd if=/dev/urandom of="$VMS/demo-vm/root.img" bs=1M count=64 conv=notrunc status=none
    truncate -s 256M "$VMS/demo-vm/data.raw"
    dd if=/dev/urandom of="$VMS/demo-vm/data.raw" bs=1M count=8 seek=100 conv=notrunc status=none
fi
if [ ! -f "$DEMO/server.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$DEMO/server.key" -out "$DEMO/server.crt" 2>/dev/null
    chmod 600 "$DEMO/server.key"
fi
[ -f "$DEMO/users" ] || echo "demo:$(openssl passwd -6 demo)" >"$DEMO/users"
chmod 600 "$DEMO/users" # vmexportd refuses a users file that others can read
cat >"$DEMO/vmexportd.conf" <<CONF
[server]
listen = 127.0.0.1:$PORT
certificate = $DEMO/server.crt
key = $DEMO/server.key

[auth]
users_file = $DEMO/users
jwt_secret_file = $DEMO/jwt.key
token_ttl = 3600

[catalog]
db_file = $DEMO/catalog.db

[provider.local]
type = dir
path = $VMS
CONF

cat <<EOF2
vmexportd demo: https://127.0.0.1:$PORT  (user demo, password demo; CA: $DEMO/server.crt)
Try, in another shell (the README's first backup starts from the same two settings:
VMEXPORT_DEMO_DIR=$DEMO VMEXPORT_DEMO_PORT=$PORT):
  TOKEN=\$(curl -s --cacert $DEMO/server.crt -d '{"username":"demo","password":"demo"}' https://127.0.0.1:$PORT/api/v1/auth/login | jq -r .token)
  curl -s --cacert $DEMO/server.crt -H "Authorization: Bearer \$TOKEN" https://127.0.0.1:$PORT/api/v1/vms | jq
  curl -s --cacert $DEMO/server.crt -H "Authorization: Bearer \$TOKEN" -X POST https://127.0.0.1:$PORT/api/v1/vms/demo-vm/snapshots | jq
Stop with Ctrl-C.
EOF2
"$ROOT/build/vmexportd" --config "$DEMO/vmexportd.conf" -v
