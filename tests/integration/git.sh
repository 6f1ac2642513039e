#!/bin/bash
# Integration workload: git. A repository in the run directory with a few
# hundred generated files over several commits, then log, diff, blame, grep,
# gc, repack, fsck. Dates, names and config are fixed so hashes are stable.
set -euo pipefail
case ${1:-} in
setup) command -v git >/dev/null || { echo "missing: git" >&2; exit 77; } ;;
run)
  export HOME=$PWD/home GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null LC_ALL=C TZ=UTC
  export GIT_AUTHOR_NAME=Tester GIT_AUTHOR_EMAIL=tester@example.com
  export GIT_COMMITTER_NAME=Tester GIT_COMMITTER_EMAIL=tester@example.com
  mkdir -p "$HOME"
  git init -q -b main repo
  cd repo
  git config core.autocrlf false
  git config gc.auto 0
  commit() {  # commit N MESSAGE
    export GIT_AUTHOR_DATE="2024-01-0$1T12:00:00Z" GIT_COMMITTER_DATE="2024-01-0$1T12:00:00Z"
    git add -A
    git commit -q -m "$2"
  }
  gen() {  # gen ROUND: writes/rewrites files
    local r=$1 d f i
    for ((d = 0; d < 20; d++)); do
      mkdir -p "dir$d/sub$((d % 4))"
      for ((f = 0; f < 20; f++)); do
        if (((d * 20 + f) % (r + 1) == 0)); then
          {
            for ((i = 0; i < 40 + f; i++)); do
              echo "round $r file $d/$f line $i value $(((d * 131 + f * 17 + i * r) % 1009))"
            done
          } >"dir$d/sub$((d % 4))/file$f.txt"
        fi
      done
    done
  }
  for r in 1 2 3 4 5 6; do
    gen "$r"
    if ((r == 4)); then git rm -q -r -f dir3; mkdir -p moved; git mv dir4 moved/dir4; fi
    commit "$r" "round $r"
  done
  git checkout -q -b topic HEAD~2
  gen 7
  commit 7 "topic work"
  git checkout -q main
  export GIT_AUTHOR_DATE="2024-01-08T12:00:00Z" GIT_COMMITTER_DATE="2024-01-08T12:00:00Z"
  git merge -q -X theirs -m "merge topic" topic >/dev/null
  echo "head: $(git rev-parse HEAD)"
  echo "files: $(git ls-files | wc -l)"
  # (no "| head" on a producer: with pipefail its SIGPIPE would fail the run)
  git log --format='%h %s' --stat=80 >log.txt
  sed -n '1,60p;$p' log.txt
  git log --all --oneline | wc -l
  git diff --stat HEAD~5 HEAD | tail -n 1
  git diff HEAD~3 HEAD -- dir0 | sha256sum
  git blame -s dir0/sub0/file3.txt | sha256sum
  git grep -c 'value 1000' >grep.txt
  sed -n '1,5p;$p' grep.txt
  git gc -q
  git repack -q -a -d -f --window=50
  git count-objects -v | grep -E '^(count|in-pack|packs)'
  git fsck --full --strict --no-progress 2>&1
  git verify-pack -v .git/objects/pack/pack-*.idx | grep -c -E 'commit|tree|blob'
  git archive --format=tar HEAD | tar -t | wc -l
  ;;
esac
