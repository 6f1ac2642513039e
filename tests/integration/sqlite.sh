#!/bin/bash
# Integration workload: sqlite3. "setup" generates 100k INSERT statements
# (one transaction); "run" loads them into a file database and an in-memory
# one and runs aggregate, index, join, window, CTE, sort and vacuum queries.
set -euo pipefail
shared=${MAPALLOC_IT_SHARED:?}
case ${1:-} in
setup)
  command -v sqlite3 >/dev/null || { echo "missing: sqlite3" >&2; exit 77; }
  awk 'BEGIN {
    print "CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL, note TEXT);";
    print "CREATE TABLE g(grp INTEGER PRIMARY KEY, label TEXT);";
    print "BEGIN;";
    s = 7;
    for (i = 1; i <= 100000; i++) {
      s = (s * 69069 + 1) % 4294967296;
      grp = s % 500; v = (s % 100000) / 7.0;
      note = "";
      for (j = 0; j < i % 9; j++) note = note "n" (s % (j + 3));
      printf "INSERT INTO t VALUES(%d,%d,'\''name_%d_%x'\'',%.4f,'\''%s'\'');\n", i, grp, i % 977, s, v, note;
    }
    for (g = 0; g < 500; g++) printf "INSERT INTO g VALUES(%d,'\''label%03d'\'');\n", g, g;
    print "COMMIT;";
  }' >"$shared/load.sql"
  ;;
run)
  queries=$(cat <<'SQL'
SELECT 'count', count(*), sum(grp), printf('%.2f', sum(val)) FROM t;
SELECT 'groups', count(DISTINCT grp), max(length(note)), min(name), max(name) FROM t;
SELECT 'top', grp, count(*), printf('%.3f', avg(val)) FROM t GROUP BY grp ORDER BY count(*) DESC, grp LIMIT 5;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp_val ON t(grp, val);
SELECT 'like', count(*) FROM t WHERE name LIKE 'name_12_%';
SELECT 'range', count(*), printf('%.4f', sum(val)) FROM t WHERE grp = 42 AND val BETWEEN 1000 AND 5000;
SELECT 'join', g.label, count(*) FROM t JOIN g USING(grp) WHERE t.id % 1000 = 0 GROUP BY g.label ORDER BY 3 DESC, 2 LIMIT 3;
SELECT 'window', id, grp, rnk FROM (SELECT id, grp, rank() OVER (PARTITION BY grp ORDER BY val DESC, id) AS rnk FROM t) WHERE rnk = 1 ORDER BY grp LIMIT 5;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000)
  SELECT 'cte', count(*), sum(x) FROM c;
SELECT 'sorted', group_concat(name, ',') FROM (SELECT name FROM t ORDER BY note DESC, val, id LIMIT 20);
SELECT 'concat', length(group_concat(note || name, '|')) FROM t;
UPDATE t SET note = upper(note) || 'x' WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
SELECT 'after', count(*), sum(length(note)) FROM t;
VACUUM;
PRAGMA integrity_check;
SQL
)
  sqlite3 -batch db.sqlite <"$shared/load.sql"
  sqlite3 -batch db.sqlite "$queries"
  # The same in memory, with a big sort without an index.
  { cat "$shared/load.sql"; echo "SELECT 'mem', count(*), sum(id * (grp + 1) % 7919) FROM (SELECT * FROM t ORDER BY note, name DESC, val);"; } |
    sqlite3 -batch :memory:
  ;;
esac
