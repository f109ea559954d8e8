# Sourced by the scripts that need Debian packages a fresh machine lacks.
#
#   need_commands memcached:memcached redis-server:redis-server   (command:package pairs)
#
# Installs the package of every command that is missing (as root, or through sudo), then stops
# the services Debian starts for them: the scripts run their own servers on free ports.
need_commands() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  install_packages "${missing[@]}"
}

# Installs the given Debian packages (nothing when none is given).
install_packages() {
  [ $# -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "== installing $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
  $sudo systemctl stop memcached redis-server >/dev/null 2>&1 || true
}
