#!/bin/sh
# The chat page's tests (tests/serve/test_page.py) drive Debian's chromium through Playwright, which cannot download
# its own browser here. Install it when it is missing and apt-get can: as root, or through sudo when that needs no
# password. Never fails the build: without a browser those tests skip with the reason (and fail under CI=true).
set -u

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium is missing and apt-get is not here: install Chromium yourself to test the" \
         "chat page (its tests skip without it, and fail under CI=true)"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "ensure_chromium: chromium is missing; run 'sudo apt-get install chromium' to test the chat page" \
         "(its tests skip without it, and fail under CI=true)"
    exit 0
fi
echo "ensure_chromium: installing Debian's chromium for the chat page's tests: ${as_root:+$as_root }apt-get install chromium"
if $as_root apt-get update -q && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; then
    echo "ensure_chromium: installed $(chromium --version 2>/dev/null || echo chromium)"
else
    echo "ensure_chromium: apt-get could not install chromium (see above); the chat page's tests will skip" \
         "(and fail under CI=true)"
fi
exit 0
