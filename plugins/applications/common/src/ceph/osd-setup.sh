# Turns this container into one Ceph OSD over the block device at /dev/ceph-1, with the
# cluster's ceph.conf and admin keyring already in /etc/ceph (incus-osd's add-drive puts
# them there, then runs this with `sh -eux`). Ceph's manual OSD deployment, bluestore.
dev=/dev/ceph-1
class=@DEVICE_CLASS@

wipefs --all --force "$dev"

# A new OSD number from the monitors, and its data directory pointing at the device.
id=$(ceph osd create)
dir=/var/lib/ceph/osd/ceph-$id
mkdir -p "$dir"
ln -s "$dev" "$dir/block"
echo bluestore > "$dir/type"
uuidgen > "$dir/fsid"

# Its key, registered with the monitors with the OSD profile.
ceph auth add "osd.$id" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *'
ceph auth export "osd.$id" > "$dir/keyring"

ceph-osd -i "$id" --mkfs --no-mon-config
chown -R ceph:ceph /var/lib/ceph/osd
systemctl enable --now "ceph-osd@$id"

# The device class the drive's bus says (once the OSD has reported in).
sleep 5
ceph osd crush rm-device-class "$id"
ceph osd crush set-device-class "$class" "$id"
