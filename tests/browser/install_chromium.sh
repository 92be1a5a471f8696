#!/usr/bin/env bash
# Chromium and its driver for the console's browser test, inside the checkout (.browser/):
# Debian's packages, downloaded with apt and unpacked with dpkg -x, never installed into
# the system. Where that cannot be done, .browser/unavailable says why and the test skips
# with that message; setup goes on either way.
set -uo pipefail
DIR=${1:-.browser}
rm -rf "$DIR" && mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
give_up() { echo "$1" > "$DIR/unavailable"; echo "browser test: $1" >&2; exit 0; }

command -v apt-get >/dev/null && command -v dpkg >/dev/null \
  || give_up "no apt-get/dpkg here (Debian's chromium and chromium-driver are needed)"
WANTED="chromium chromium-driver fonts-dejavu-core"
missing() { apt-get install -s --no-install-recommends $WANTED 2>/dev/null | awk '/^Inst /{print $2}'; }
if ! apt-get install -s --no-install-recommends $WANTED >/dev/null 2>&1; then
  # a fresh image may have no package lists yet: fetching them installs nothing
  [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1
  apt-get install -s --no-install-recommends $WANTED >/dev/null 2>&1 \
    || give_up "apt cannot resolve $WANTED (no package lists, or not Debian)"
fi
PACKAGES=$(missing)
mkdir -p "$DIR/debs" "$DIR/root"
if [ -n "$PACKAGES" ]; then
  (cd "$DIR/debs" && apt-get download -o APT::Sandbox::User=root $PACKAGES >/dev/null 2>&1) \
    || give_up "apt-get download failed for: $PACKAGES"
  for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$DIR/root" || give_up "dpkg -x $deb failed"; done
fi
rm -rf "$DIR/debs"

LIBS=$(find "$DIR/root/usr/lib" -maxdepth 2 -type d \( -name '*-linux-gnu' -o -name pulseaudio \) \
  2>/dev/null | tr '\n' ':')
for tool in chromium chromedriver; do
  inner="$DIR/root/usr/bin/$tool"
  [ "$tool" = chromium ] && inner="$DIR/root/usr/lib/chromium/chromium"
  [ -x "$inner" ] || inner=$(command -v "$tool" || true)  # already on the system
  [ -n "$inner" ] || give_up "$tool is missing after unpacking"
  cat > "$DIR/$tool" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$LIBS$DIR/root/usr/lib/chromium\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$inner" "\$@"
WRAP
  chmod +x "$DIR/$tool"
done
"$DIR/chromium" --headless --no-sandbox --disable-gpu --dump-dom 'data:text/html,<p>ok</p>' \
  2>/dev/null | grep -q '<p>ok</p>' || give_up "the unpacked Chromium does not start"
"$DIR/chromedriver" --version >/dev/null 2>&1 || give_up "the unpacked chromedriver does not start"
echo "browser test: Chromium in $DIR ($("$DIR/chromium" --version 2>/dev/null))" >&2
