#!/bin/sh
# binary-closure.sh DEST BINARY...: copy each binary and the shared libraries it links (ldd),
# except glibc's own (the runtime stage has the same base), into DEST/bin and DEST/lib, and
# write DEST/wrap/<name> scripts that run them with DEST/lib first. A runtime stage then gets
# ffprobe (or ffmpeg) without the ffmpeg package's X11, SDL, PulseAudio and other dependencies.
set -eu
dest=$1
shift
mkdir -p "$dest/bin" "$dest/lib" "$dest/wrap"
for binary in "$@"; do
  path=$(command -v "$binary")
  cp -L "$path" "$dest/bin/"
  ldd "$path" | awk '/=> \// {print $3}' \
    | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' \
    | while read -r lib; do cp -Ln "$lib" "$dest/lib/"; done
  name=$(basename "$path")
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/bin/%s "$@"\n' "$dest" "$dest" "$name" > "$dest/wrap/$name"
  chmod 755 "$dest/wrap/$name"
done
