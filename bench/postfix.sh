#!/usr/bin/env bash
# The same workloads as bench/run.sh, against Postfix + Dovecot SASL from the Debian
# packages, on loopback high ports:
#   MX-like smtpd on 127.0.0.1:26225 (no TLS required), delivering bench.test to a Maildir
#   (virtual(8)); submission smtpd on 127.0.0.1:26287 (STARTTLS required, AUTH PLAIN via
#   Dovecot's auth socket, passwd-file with the same user and SHA512-CRYPT hash as
#   postern); relay.test routed by transport_maps to a postern-bench sink on :26226.
# Server CPU is summed over every Postfix process (master's tree) and Dovecot's (its
# master's tree), exited children included (cutime + cstime of their parents).
#
# Uses the system instance, configured only for this run: /etc/postfix is saved first and
# restored at the end, Postfix and this Dovecot are stopped. Must run as root on a
# throwaway machine; installs postfix and dovecot-core when missing.
# Environment: TOTAL_A, TOTAL_B, TOTAL_C, ONLY, PROFILE and SETTLE as for run.sh, KEEP=1,
#   NO_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
MX_PORT=26225
SUB_PORT=26287
SINK_PORT=26226
SPOOL=/var/spool/postfix

if [[ ${NO_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release --locked -p postern -p postern-bench >&2)
fi
if ! command -v postfix > /dev/null || ! command -v dovecot > /dev/null; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix dovecot-core >&2
fi

DIR=$(new_run_dir postfix)
chmod 755 "$DIR"
cp -a /etc/postfix "$DIR/etc-postfix.orig"
SINK_PID=
POSTFIX_STARTED=0
cleanup() {
    if [[ $POSTFIX_STARTED == 1 ]]; then
        postfix stop >&2 2>/dev/null || true
    fi
    if [[ -f $DIR/dovecot-run/master.pid ]]; then
        kill "$(cat "$DIR/dovecot-run/master.pid")" 2>/dev/null || true
    fi
    if [[ -n $SINK_PID ]]; then
        kill "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
    fi
    sleep 1
    rm -f "$SPOOL/private/auth"
    rm -rf /etc/postfix
    cp -a "$DIR/etc-postfix.orig" /etc/postfix
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $DIR" >&2
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

# The same login and hash format as postern's (SHA512-CRYPT, written by postern).
printf 'hostname = "x"\ndata_dir = "%s/pdata"\n[[listener]]\nname = "x"\naddr = "127.0.0.1:0"\nrole = "mx"\n[auth]\npasswd_file = "%s/passwd"\n' \
    "$DIR" "$DIR" > "$DIR/postern.toml"
echo "$PASSWORD" | "$B/postern" user add "$USER_ADDR" --config "$DIR/postern.toml" --password-stdin >&2
chmod 644 "$DIR/passwd"

# The same kind of certificate as postern generates (ECDSA P-256, self-signed).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=mail.bench.test -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null

mkdir -p "$DIR/vmail" "$DIR/dovecot-run" "$DIR/dovecot-state"
chown 65534:65534 "$DIR/vmail"
MAILDIR=$DIR/vmail/bench.test/bench/Maildir
echo "bench@bench.test bench.test/bench/Maildir/" > "$DIR/vmailbox"
echo "relay.test smtp:[127.0.0.1]:$SINK_PORT" > "$DIR/transport"

cat > "$DIR/dovecot.conf" <<EOF
protocols =
base_dir = $DIR/dovecot-run/
state_dir = $DIR/dovecot-state
log_path = $DIR/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {
  driver = passwd-file
  args = $DIR/passwd
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=$DIR/vmail/%d/%n
}
service auth {
  unix_listener $SPOOL/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
EOF

cat > /etc/postfix/main.cf <<EOF
compatibility_level = 3.6
myhostname = mail.bench.test
mydomain = bench.test
myorigin = bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
append_dot_mydomain = no
maillog_file = $DIR/postfix.log
maillog_file_prefixes = /var, /dev/stdout, $DIR
virtual_mailbox_domains = bench.test
virtual_mailbox_base = $DIR/vmail
virtual_mailbox_maps = texthash:$DIR/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
transport_maps = texthash:$DIR/transport
smtpd_tls_cert_file = $DIR/cert.pem
smtpd_tls_key_file = $DIR/key.pem
smtpd_tls_security_level = may
smtp_tls_security_level = may
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
# Like postern's bench config: no per-client connection limit.
smtpd_client_connection_count_limit = 0
EOF

# Every service unchrooted (Debian's chroot needs copies of /etc files in the spool).
cat > /etc/postfix/master.cf <<EOF
127.0.0.1:$MX_PORT inet n - n - - smtpd
127.0.0.1:$SUB_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=private/auth
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

"$B/postern-bench" --sink "127.0.0.1:$SINK_PORT" > "$DIR/sink.out" 2> "$DIR/sink.log" &
SINK_PID=$!

postfix check >&2 || echo "postfix check: status $?" >&2
dovecot -c "$DIR/dovecot.conf"
POSTFIX_STARTED=1
postfix start >&2

# Wait (at most 30 s) for both smtpd ports, Dovecot's auth socket and the sink.
ready() {
    (exec 3<> "/dev/tcp/127.0.0.1/$MX_PORT") 2>/dev/null &&
        (exec 3<> "/dev/tcp/127.0.0.1/$SUB_PORT") 2>/dev/null &&
        [[ -S $SPOOL/private/auth ]] && grep -q 'sink listening' "$DIR/sink.log"
}
for _ in $(seq 300); do
    ready && break
    sleep 0.1
done
if ! ready; then
    echo "Postfix/Dovecot did not come up:" >&2
    cat "$DIR/postfix.log" "$DIR/dovecot.log" >&2 2>/dev/null || true
    exit 1
fi

SERVER=postfix+dovecot
server_pids() {
    tr -d ' ' < "$SPOOL/pid/master.pid"
    echo
    cat "$DIR/dovecot-run/master.pid"
    echo
}
queue_empty() {
    postqueue -p 2>/dev/null | grep -q 'Mail queue is empty'
}
profiled_workloads
