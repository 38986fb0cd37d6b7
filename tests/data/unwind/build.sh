#!/bin/sh
# Rebuilds unwind_x64.exe (and its PDB, link map and LLVM's reading of its unwind data) from src/.
# Needs clang, lld-link and llvm-readobj; the outputs are committed so that tests run without them.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags="--target=x86_64-pc-windows-msvc -gcodeview -fno-stack-protector -fno-builtin -fasynchronous-unwind-tables"
clang $flags -O2 -c src/chain.c -o "$work/chain.obj"
clang $flags -O1 -c src/entry.c -o "$work/entry.obj"
clang $flags -c src/shapes.S -o "$work/shapes.obj"
lld-link /nologo /debug /pdb:unwind_x64.pdb /map:unwind_x64.map /entry:entry_main /subsystem:console \
    /nodefaultlib /fixed /base:0x140000000 /out:unwind_x64.exe \
    "$work/chain.obj" "$work/entry.obj" "$work/shapes.obj"
llvm-readobj --unwind unwind_x64.exe > unwind_x64.readobj.txt
