/* The image's entry point: runs the C chain (the emulator test starts each chain on its own). */
void run_c_chain(void);

int entry_main(void)
{
    run_c_chain();
    return 0;
}

/* The MSVC ABI's marker that floating point is used; normally defined by the C runtime. */
int _fltused = 1;
