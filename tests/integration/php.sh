#!/bin/bash
# Integration workload: PHP (php_workload.php: arrays, strings, serialize,
# regexes, sorting). Debian's php-cli loads its extensions (pdo, ctype, ...)
# with RTLD_DEEPBIND, which the shim's dlopen drops (preload/dlopen.cpp):
# without that, `php` crashed at start-up under the shim.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${1:-} in
setup) command -v php >/dev/null || { echo "missing: php" >&2; exit 77; } ;;
run) php -d memory_limit=1G "$here/php_workload.php" ;;
esac
