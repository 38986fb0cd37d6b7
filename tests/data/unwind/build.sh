#!/bin/sh
# Rebuilds the test images from src/: unwind_x64.exe (with its PDB, link map and LLVM's reading of its
# unwind data) and unwind_x64_v2.exe (hand-written version 2 unwind info, which llvm-readobj 14
# cannot read). Needs clang, lld-link and llvm-readobj; the outputs are committed so that the tests
# run without them.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags="--target=x86_64-pc-windows-msvc -gcodeview -fno-stack-protector -fno-builtin -fasynchronous-unwind-tables"
link="lld-link /nologo /debug /subsystem:console /nodefaultlib /fixed /base:0x140000000"
clang $flags -O2 -c src/chain.c -o "$work/chain.obj"
clang $flags -O1 -c src/entry.c -o "$work/entry.obj"
clang $flags -c src/shapes.S -o "$work/shapes.obj"
clang $flags -c src/epilog_v2.S -o "$work/epilog_v2.obj"
$link /pdb:unwind_x64.pdb /pdbaltpath:unwind_x64.pdb /map:unwind_x64.map /entry:entry_main /out:unwind_x64.exe \
    "$work/chain.obj" "$work/entry.obj" "$work/shapes.obj"
$link /pdb:unwind_x64_v2.pdb /pdbaltpath:unwind_x64_v2.pdb /map:unwind_x64_v2.map /entry:v2_entry /out:unwind_x64_v2.exe "$work/epilog_v2.obj"
llvm-readobj --unwind unwind_x64.exe > unwind_x64.readobj.txt
