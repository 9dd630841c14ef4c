# Turns this container into one of the Ceph cluster's three control servers: a monitor,
# a manager, a metadata server and an RBD mirror, named after the container. The first one
# makes the cluster (its ceph.conf, the monitor and admin keys, the initial monitor map);
# the others find ceph.conf, the admin keyring and the monitors' keyring (in /tmp) put there
# by incus-osd and join it. Run with `sh -eux`. Ceph's manual deployment steps.
name=@NAME@
first=@FIRST@

if [ "$first" = 1 ]; then
    fsid=@FSID@
    addr=@ADDR@
    cat > /etc/ceph/ceph.conf <<CONF
[global]
fsid = $fsid
mon_initial_members = $name
mon_host = [$addr]
public_network = @SUBNET@
ms_bind_ipv4 = false
ms_bind_ipv6 = true
CONF
    ceph-authtool --create-keyring /etc/ceph/ceph.client.admin.keyring --gen-key \
        -n client.admin --cap mon 'allow *' --cap mgr 'allow *' --cap osd 'allow *' --cap mds 'allow *'
    ceph-authtool --create-keyring /tmp/ceph.mon.keyring --gen-key -n mon. --cap mon 'allow *'
    ceph-authtool /tmp/ceph.mon.keyring --import-keyring /etc/ceph/ceph.client.admin.keyring
    chown ceph:ceph /tmp/ceph.mon.keyring
    monmaptool --create --fsid "$fsid" --add "$name" "[$addr]" /tmp/monmap
else
    ceph mon getmap -o /tmp/monmap
fi

# The monitor.
mon=/var/lib/ceph/mon/ceph-$name
mkdir -p "$mon"
ceph-mon --mkfs -i "$name" --monmap /tmp/monmap --keyring /tmp/ceph.mon.keyring
chown -R ceph:ceph "$mon"
systemctl enable --now "ceph-mon@$name.service"

if [ "$first" = 1 ]; then
    ceph mon enable-msgr2
    ceph config set global auth_allow_insecure_global_id_reclaim false
    ceph config set global mon_allow_pool_delete true
fi

# The manager and the metadata server, each with its own key.
for daemon in mgr mds; do
    dir=/var/lib/ceph/$daemon/ceph-$name
    mkdir -p "$dir"
    if [ "$daemon" = mgr ]; then
        ceph auth get-or-create "mgr.$name" mon 'allow profile mgr' osd 'allow *' mds 'allow *' > "$dir/keyring"
    else
        ceph auth get-or-create "mds.$name" mon 'profile mds' mgr 'profile mds' mds 'allow *' osd 'allow *' > "$dir/keyring"
    fi
    chown -R ceph:ceph "$dir"
    systemctl enable --now "ceph-$daemon@$name.service"
done

# The RBD mirror.
keyring=/etc/ceph/ceph.client.rbd-mirror.$name.keyring
ceph auth get-or-create "client.rbd-mirror.$name" mon 'profile rbd-mirror' osd 'profile rbd' > "$keyring"
chown ceph:ceph "$keyring"
systemctl enable --now "ceph-rbd-mirror@rbd-mirror.$name.service"
