#!/usr/bin/env bash
# Real documents for the document-format tests (tests/pipeline/test_documents.py), none
# written here: Debian's documentation packages, and DOCX / PDF files LibreOffice makes
# from them. Idempotent: what is in the cache is kept (a second run takes milliseconds).
#
#   scripts/test-documents.sh [CACHE]      (default .cache/test-documents)
#
#   CACHE/root/usr/share/doc/postgresql-doc-15/html/   the PostgreSQL 15 manual, HTML
#   CACHE/root/usr/share/doc/bash/bashref.pdf          the Bash Reference Manual, PDF
#   CACHE/converted/datatype-json.docx                 a manual page, converted by LibreOffice
#   CACHE/converted/datatype-json.pdf                  the same page, PDF with bookmarks
#   CACHE/converted/encrypted.pdf                      that PDF, with an open password
#
# Needs apt-get and dpkg-deb (Debian), and soffice (libreoffice-writer-nogui: make
# test-tools installs it). apt-get update runs only when a download fails.
set -euo pipefail
CACHE="${1:-.cache/test-documents}"
PACKAGES="postgresql-doc-15 bash-doc"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
mkdir -p "$CACHE/debs" "$CACHE/root" "$CACHE/converted"
CACHE="$(cd "$CACHE" && pwd)"

for pkg in $PACKAGES; do
  [ -e "$CACHE/root/.$pkg" ] && continue
  (cd "$CACHE/debs" && apt-get download -qq "$pkg" 2>/dev/null) \
    || { $SUDO apt-get update -qq && (cd "$CACHE/debs" && apt-get download -qq "$pkg"); } \
    || { echo "test-documents: cannot download $pkg from Debian" >&2; exit 1; }
  dpkg-deb -x "$CACHE"/debs/"${pkg}"_*.deb "$CACHE/root"
  touch "$CACHE/root/.$pkg"
done

SOURCE="$CACHE/root/usr/share/doc/postgresql-doc-15/html/datatype-json.html"
OUT="$CACHE/converted"
if [ ! -s "$OUT/datatype-json.docx" ] || [ ! -s "$OUT/datatype-json.pdf" ] || [ ! -s "$OUT/encrypted.pdf" ]; then
  command -v soffice >/dev/null || { echo "test-documents: soffice missing (make test-tools)" >&2; exit 1; }
  # a profile of its own, so a LibreOffice the user has open does not take the job
  PROFILE="$(mktemp -d)"
  trap 'rm -rf "$PROFILE"' EXIT
  LO=(soffice "-env:UserInstallation=file://$PROFILE" --headless --norestore)
  TMP="$(mktemp -d)"
  # HTML is imported as a Writer document (not Writer/Web), so Word and PDF export apply
  timeout 300 "${LO[@]}" --infilter="HTML (StarWriter)" --convert-to 'docx:MS Word 2007 XML' --outdir "$TMP" "$SOURCE" >/dev/null
  timeout 300 "${LO[@]}" --infilter="HTML (StarWriter)" --convert-to 'pdf:writer_pdf_Export:{"ExportBookmarks":{"type":"boolean","value":"true"}}' --outdir "$TMP" "$SOURCE" >/dev/null
  mkdir -p "$TMP/enc"
  timeout 300 "${LO[@]}" --infilter="HTML (StarWriter)" --convert-to 'pdf:writer_pdf_Export:{"EncryptFile":{"type":"boolean","value":"true"},"DocumentOpenPassword":{"type":"string","value":"not-shared"}}' --outdir "$TMP/enc" "$SOURCE" >/dev/null
  mv "$TMP/datatype-json.docx" "$TMP/datatype-json.pdf" "$OUT/"
  mv "$TMP/enc/datatype-json.pdf" "$OUT/encrypted.pdf"
  rm -rf "$TMP"
fi
