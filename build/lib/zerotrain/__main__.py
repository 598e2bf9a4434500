from zerotrain.cli import main_exit

main_exit()
