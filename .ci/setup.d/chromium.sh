# Sourced by .ci/run before the tests. Browser tests (tests/browser): Debian's Chromium, driven by Playwright from
# PyPI (no browser download). Without it the browser tests are skipped with a message.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  for attempt in 1 2 3 4 5; do  # another apt may hold the dpkg lock for a while
    if (apt-get update -q && apt-get install -y -q chromium) >/dev/null 2>&1; then break; fi
    sleep 15
  done
fi
command -v chromium >/dev/null 2>&1 || echo "chromium could not be installed: the browser tests will be skipped"
