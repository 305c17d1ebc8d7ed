# gnuplot table1.gp  (reads table1.dat, writes table1.svg)
set terminal svg size 1000,520 dynamic enhanced font 'sans,12' background rgb 'white'
set output 'table1.svg'
set title "hvtrace bench table1: time relative to QEMU without plugin (95% bootstrap CI)"
set ylabel "time / time(none)  (log scale)"
set logscale y
set grid ytics
set key top left
set xtics rotate by -25
set xrange [-0.6:*]
set offsets 0, 0.6, 0, 0
set datafile missing "NaN"
f(x) = 1
plot 'table1.dat' using ($0-0.12):2:3:4:xtic(1) with yerrorbars pt 7 ps 1.2 lc rgb '#1f77b4' title 'pti=off', \
     '' using ($0+0.12):5:6:7 with yerrorbars pt 5 ps 1.2 lc rgb '#d62728' title 'pti=on', \
     1 with lines dt 2 lc rgb 'gray' notitle
