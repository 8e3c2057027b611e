package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// QuiesceFaultKey in a VM's extraConfig, set to "true", makes quiesced snapshots of it fail.
const QuiesceFaultKey = "vcbfs.test.quiesceFault"

// quiesceFaultType is the moref type that quiesced CreateSnapshot_Task calls on such VMs are
// redirected to. The simulator dispatches a call to whatever object the Map holds under the
// call's _this, and its own code type-asserts VMs as *simulator.VirtualMachine, so a wrapper VM
// in the Map would break snapshot removal; a separate object under a separate key does not.
const quiesceFaultType = "VcbfsQuiesceFault"

const quiesceFaultMessage = "An error occurred while saving the snapshot: " +
	"Failed to quiesce the virtual machine."

// SnapshotSecondsKey in a VM's extraConfig, set to a number N, makes CreateSnapshot_Task on it
// answer at once with a task that stays running for N seconds and only then makes the
// snapshot, as a slow quiesce or a busy host does. CancelTask is not supported, as for many
// vSphere tasks.
const SnapshotSecondsKey = "vcbfs.test.snapshotSeconds"

const slowSnapshotType = "VcbfsSlowSnapshot"

// RemoveFaultsKey in a VM's extraConfig, set to a number N, makes the first N
// RemoveSnapshot_Task calls on that VM's snapshots fail (a task ending in vim.fault.FileLocked,
// as when a backup appliance still holds the disk); later calls remove as usual.
const RemoveFaultsKey = "vcbfs.test.removeSnapshotFaults"

// RemoveSecondsKey in a VM's extraConfig, set to a number N, makes each RemoveSnapshot_Task
// call on that VM's snapshots answer only after N seconds (a slow consolidation).
const RemoveSecondsKey = "vcbfs.test.removeSnapshotSeconds"

const removeFaultType = "VcbfsRemoveFault"

const removeFaultMessage = "Unable to access file since it is locked"

// StrictSessions (the launcher's -strict-sessions flag) makes the simulator check sessions as
// vSphere does where stock vcsim is lenient: /folder answers 401 without a live session cookie,
// and reading properties needs a session (NotAuthenticated otherwise), except the anonymous
// read of ServiceInstance.content. So a terminated session is noticed on every path.
var StrictSessions = false

var removeFaults = struct {
	sync.Mutex
	used map[types.ManagedObjectReference]int // VM -> failed removals so far
}{used: map[types.ManagedObjectReference]int{}}

// installHooks wraps the server's handler and registers the layoutEx repair. It runs before the
// URL is printed, so no client can have connected yet.
func installHooks(server *simulator.Server) {
	server.Config.Handler = quiesceHook{next: server.Config.Handler}
	repair := &layoutRepair{
		self:  types.ManagedObjectReference{Type: "VcbfsLayoutRepair", Value: "vcbfs-layout-repair"},
		vmsn:  map[types.ManagedObjectReference]string{},
		owner: map[types.ManagedObjectReference]types.ManagedObjectReference{},
	}
	simulator.Map.AddHandler(repair)
	simulator.Map.AddHandler(&consolidationFlag{
		self: types.ManagedObjectReference{Type: "VcbfsConsolidationFlag", Value: "vcbfs-consolidation-flag"},
	})
}

// quiesceHook redirects quiesced CreateSnapshot_Task calls on VMs with the fault key to a
// quiesceFaulter; everything else (sessions, delays, faults, the envelope) stays the simulator's.
type quiesceHook struct {
	next http.Handler
}

func (h quiesceHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if StrictSessions && strings.HasPrefix(r.URL.Path, "/folder/") && h.sessionFault(r) != nil {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.Method == http.MethodPost {
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if StrictSessions && needsSession(body) {
			if fault := h.sessionFault(r); fault != nil {
				for k, v := range fault.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(fault.Code)
				_, _ = w.Write(fault.Body.Bytes())
				return
			}
		}
		body = redirectQuiescedSnapshot(body)
		body = redirectRemoval(body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	h.next.ServeHTTP(w, r)
}

const currentTimeProbe = `<?xml version="1.0" encoding="UTF-8"?>` +
	`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">` +
	`<soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this>` +
	`</CurrentTime></soapenv:Body></soapenv:Envelope>`

// sessionFault asks the simulator itself whether r's cookie names a live session (a
// CurrentTime call, which needs one): nil if so, else the simulator's NotAuthenticated answer.
func (h quiesceHook) sessionFault(r *http.Request) *httptest.ResponseRecorder {
	probe := httptest.NewRequest(http.MethodPost, "/sdk", strings.NewReader(currentTimeProbe))
	probe.Header.Set("Content-Type", "text/xml; charset=utf-8")
	probe.Header.Set("SOAPAction", "urn:vim25/7.0")
	for _, c := range r.Cookies() {
		probe.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	h.next.ServeHTTP(rec, probe)
	if rec.Code == http.StatusOK && !bytes.Contains(rec.Body.Bytes(), []byte("NotAuthenticated")) {
		return nil
	}
	return rec
}

var firstMethod = regexp.MustCompile(`<(?:[\w.-]+:)?Body\b[^>]*>\s*<(?:[\w.-]+:)?([\w]+)`)

// needsSession says whether a SOAP request is one that stock vcsim answers without a session
// but vSphere does not: property reads other than ServiceInstance.content.
func needsSession(body []byte) bool {
	m := firstMethod.FindSubmatch(body)
	if m == nil {
		return false
	}
	switch string(m[1]) {
	case "RetrieveProperties", "RetrievePropertiesEx", "ContinueRetrievePropertiesEx", "Fetch", "List":
		return !bytes.Contains(body, []byte(`type="ServiceInstance"`))
	}
	return false
}

type removeEnvelope struct {
	Body struct {
		Request *struct {
			This struct {
				Type  string `xml:"type,attr"`
				Value string `xml:",chardata"`
			} `xml:"_this"`
		} `xml:"RemoveSnapshot_Task"`
	} `xml:"Body"`
}

// redirectRemoval delays RemoveSnapshot_Task calls on VMs with RemoveSecondsKey, and sends the
// first N calls on VMs with RemoveFaultsKey = N to a removeFaulter.
func redirectRemoval(body []byte) []byte {
	if !bytes.Contains(body, []byte("RemoveSnapshot_Task")) {
		return body
	}
	var env removeEnvelope
	if xml.Unmarshal(body, &env) != nil || env.Body.Request == nil {
		return body
	}
	this := env.Body.Request.This
	snapRef := types.ManagedObjectReference{Type: this.Type, Value: strings.TrimSpace(this.Value)}
	snap, ok := simulator.Map.Get(snapRef).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return body
	}
	vmRef := snap.Vm
	if seconds, err := strconv.ParseFloat(extraConfigOf(vmRef, RemoveSecondsKey), 64); err == nil && seconds > 0 {
		time.Sleep(time.Duration(seconds * float64(time.Second)))
	}
	n, err := strconv.Atoi(extraConfigOf(vmRef, RemoveFaultsKey))
	if err != nil {
		return body
	}
	removeFaults.Lock()
	fail := removeFaults.used[vmRef] < n
	if fail {
		removeFaults.used[vmRef]++
	}
	removeFaults.Unlock()
	if !fail {
		return body
	}
	target := types.ManagedObjectReference{Type: removeFaultType, Value: snapRef.Value}
	if simulator.Map.Get(target) == nil {
		simulator.Map.Put(&removeFaulter{ExtensibleManagedObject: mo.ExtensibleManagedObject{Self: target}})
	}
	replacement := fmt.Sprintf(`<_this type="%s">%s</_this>`, target.Type, xmlEscape(snapRef.Value))
	done := false
	return thisElement.ReplaceAllFunc(body, func(old []byte) []byte {
		if done {
			return old
		}
		done = true
		return []byte(replacement)
	})
}

// removeFaulter answers RemoveSnapshot_Task for one snapshot with a failed task whose entity is
// the snapshot (as vSphere's removal tasks have); the snapshot stays.
type removeFaulter struct {
	mo.ExtensibleManagedObject
}

func (f *removeFaulter) RemoveSnapshotTask(req *types.RemoveSnapshot_Task) soap.HasFault {
	snap := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: f.Self.Value}
	fault := &types.FileLocked{}
	task := simulator.CreateTask(snap, "removeSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	simulator.Map.Update(task, []types.PropertyChange{{
		Name: "info.error",
		Val:  &types.LocalizedMethodFault{Fault: fault, LocalizedMessage: removeFaultMessage},
	}})
	return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: ref}}
}

type snapshotEnvelope struct {
	Body struct {
		Request *struct {
			This struct {
				Type  string `xml:"type,attr"`
				Value string `xml:",chardata"`
			} `xml:"_this"`
			Quiesce bool `xml:"quiesce"`
		} `xml:"CreateSnapshot_Task"`
	} `xml:"Body"`
}

var thisElement = regexp.MustCompile(`<(?:[\w.-]+:)?_this\b[^>]*>[^<]*</(?:[\w.-]+:)?_this>`)

func redirectQuiescedSnapshot(body []byte) []byte {
	if !bytes.Contains(body, []byte("CreateSnapshot_Task")) {
		return body
	}
	var env snapshotEnvelope
	if xml.Unmarshal(body, &env) != nil || env.Body.Request == nil {
		return body
	}
	this := env.Body.Request.This
	vmRef := types.ManagedObjectReference{Type: this.Type, Value: strings.TrimSpace(this.Value)}
	if vmRef.Type != "VirtualMachine" {
		return body
	}
	var target types.ManagedObjectReference
	if env.Body.Request.Quiesce && extraConfigOf(vmRef, QuiesceFaultKey) == "true" {
		target = types.ManagedObjectReference{Type: quiesceFaultType, Value: vmRef.Value}
		if simulator.Map.Get(target) == nil {
			simulator.Map.Put(&quiesceFaulter{ExtensibleManagedObject: mo.ExtensibleManagedObject{Self: target}})
		}
	} else if seconds, err := strconv.ParseFloat(extraConfigOf(vmRef, SnapshotSecondsKey), 64); err == nil {
		target = types.ManagedObjectReference{Type: slowSnapshotType, Value: vmRef.Value}
		simulator.Map.Put(&slowSnapshotter{
			ExtensibleManagedObject: mo.ExtensibleManagedObject{Self: target},
			delay:                   time.Duration(seconds * float64(time.Second)),
		})
	} else {
		return body
	}
	replacement := fmt.Sprintf(`<_this type="%s">%s</_this>`, target.Type, xmlEscape(vmRef.Value))
	done := false
	return thisElement.ReplaceAllFunc(body, func(old []byte) []byte {
		if done {
			return old
		}
		done = true
		return []byte(replacement)
	})
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// extraConfigOf reads a VM's extraConfig value for key now (tests set or change keys at any
// time); "" if the VM or the key is not there.
func extraConfigOf(ref types.ManagedObjectReference, key string) string {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return ""
	}
	value := ""
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		for _, opt := range vm.Config.ExtraConfig { // the simulator appends: the last one wins
			if o := opt.GetOptionValue(); o.Key == key {
				value = fmt.Sprint(o.Value)
			}
		}
	})
	return value
}

// extraConfigTrue says whether the VM's extraConfig sets key to "true".
func extraConfigTrue(vm *mo.VirtualMachine, key string) bool {
	if vm.Config == nil {
		return false
	}
	want := false
	for _, opt := range vm.Config.ExtraConfig { // the simulator appends, so the last one wins
		if o := opt.GetOptionValue(); o.Key == key {
			want = fmt.Sprint(o.Value) == "true"
		}
	}
	return want
}

// ConsolidationKey in a VM's extraConfig, set to "true", makes the VM report
// runtime.consolidationNeeded from its next update on (a snapshot taken or removed, say), as
// vSphere does when removing a snapshot could not merge the VM's disks.
const ConsolidationKey = "vcbfs.test.consolidationNeeded"

type consolidationFlag struct {
	self types.ManagedObjectReference
}

func (c *consolidationFlag) Reference() types.ManagedObjectReference { return c.self }

func (c *consolidationFlag) PutObject(mo.Reference) {}

func (c *consolidationFlag) RemoveObject(types.ManagedObjectReference) {}

// UpdateObject runs inside the simulator's Map.Update of any VM property, with the VM's lock held.
func (c *consolidationFlag) UpdateObject(obj mo.Reference, _ []types.PropertyChange) {
	if vm, ok := obj.(*mo.VirtualMachine); ok && extraConfigTrue(vm, ConsolidationKey) {
		vm.Runtime.ConsolidationNeeded = types.NewBool(true)
	}
}

// quiesceFaulter answers CreateSnapshot_Task for one VM with a failed task, as vSphere does
// when VMware Tools cannot quiesce the guest. The task's entity is the VM itself.
type quiesceFaulter struct {
	mo.ExtensibleManagedObject
}

func (q *quiesceFaulter) CreateSnapshotTask(req *types.CreateSnapshot_Task) soap.HasFault {
	vm := types.ManagedObjectReference{Type: "VirtualMachine", Value: q.Self.Value}
	fault := &types.ApplicationQuiesceFault{}
	fault.FaultMessage = []types.LocalizableMessage{{
		Key:     "msg.snapshot.quiesce.vmerr",
		Message: quiesceFaultMessage,
	}}
	task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	// Task.Run sets the localized message to the Go type name; vSphere shows a sentence.
	simulator.Map.Update(task, []types.PropertyChange{{
		Name: "info.error",
		Val:  &types.LocalizedMethodFault{Fault: fault, LocalizedMessage: quiesceFaultMessage},
	}})
	return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: ref}}
}

// slowSnapshotter answers CreateSnapshot_Task for one VM with a running task, and after its
// delay makes the snapshot through the VM's own CreateSnapshot_Task and gives that task's
// outcome to the first one.
type slowSnapshotter struct {
	mo.ExtensibleManagedObject
	delay time.Duration
}

func (s *slowSnapshotter) CreateSnapshotTask(req *types.CreateSnapshot_Task) soap.HasFault {
	vmRef := types.ManagedObjectReference{Type: "VirtualMachine", Value: s.Self.Value}
	task := simulator.CreateTask(vmRef, "createSnapshot", nil)
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.startTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateRunning},
	})
	go func() {
		time.Sleep(s.delay)
		vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
		state, result, fault := types.TaskInfoStateError, types.AnyType(nil), interface{}(nil)
		if ok {
			inner := types.CreateSnapshot_Task{This: vmRef, Name: req.Name, Description: req.Description,
				Memory: req.Memory, Quiesce: req.Quiesce}
			var made soap.HasFault
			simulator.Map.WithLock(vm, func() { made = vm.CreateSnapshotTask(&inner) })
			if body, ok := made.(*methods.CreateSnapshot_TaskBody); ok && body.Res != nil {
				if t, ok := simulator.Map.Get(body.Res.Returnval).(*simulator.Task); ok {
					simulator.Map.WithLock(t, func() {
						state, result = t.Info.State, t.Info.Result
						if t.Info.Error != nil {
							fault = *t.Info.Error
						}
					})
				}
			}
		}
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: state},
			{Name: "info.result", Val: result},
			{Name: "info.error", Val: fault},
		})
	}()
	return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: task.Self}}
}

// layoutRepair keeps snapshot removal from deleting the wrong file.
//
// The simulator's RefreshStorageInfo (run by CreateVM and every snapshot removal) rebuilds
// layoutEx.file with new keys and without the VM's directory in the names, while
// layoutEx.snapshot keeps the old dataKeys; the next snapshot removal then deletes whatever file
// got that key: with four snapshots removed in the order 1, 4 it deletes the VM's disk.
// After each VM update this handler puts the directory back into the names and points every
// snapshot's dataKey at its own .vmsn file again (or at no file).
type layoutRepair struct {
	mu    sync.Mutex
	self  types.ManagedObjectReference
	vmsn  map[types.ManagedObjectReference]string // snapshot -> datastore path of its .vmsn
	owner map[types.ManagedObjectReference]types.ManagedObjectReference
}

func (l *layoutRepair) Reference() types.ManagedObjectReference { return l.self }

func (l *layoutRepair) PutObject(mo.Reference) {}

// UpdateObject runs inside the simulator's Map.Update of any VM property, with the VM's lock
// held: right after CreateVM (whose layout already lacks the directory), every snapshot
// change, reconfiguration and power operation.
func (l *layoutRepair) UpdateObject(obj mo.Reference, _ []types.PropertyChange) {
	if vm, ok := obj.(*mo.VirtualMachine); ok {
		l.repair(vm)
	}
}

// RemoveObject covers RemoveAllSnapshots, which refreshes the layout between removals without a
// Map.Update of the VM. (After RemoveSnapshot, UpdateObject has already repaired everything, so
// this finds nothing to change.)
func (l *layoutRepair) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type != "VirtualMachineSnapshot" {
		return
	}
	l.mu.Lock()
	vmRef, ok := l.owner[ref]
	delete(l.owner, ref)
	delete(l.vmsn, ref)
	l.mu.Unlock()
	if !ok {
		return
	}
	if vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine); ok {
		l.repair(&vm.VirtualMachine)
	}
}

func (l *layoutRepair) repair(vm *mo.VirtualMachine) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if vm.Config == nil || vm.LayoutEx == nil {
		return
	}
	var vmx dsPath
	if !vmx.parse(vm.Config.Files.VmPathName) {
		return
	}
	dir := path.Dir(vmx.path)

	names := map[string]bool{}
	for _, f := range vm.LayoutEx.File {
		names[f.Name] = true
	}
	var files []types.VirtualMachineFileLayoutExFileInfo
	for _, f := range vm.LayoutEx.File {
		var p dsPath
		if dir != "." && p.parse(f.Name) && p.datastore == vmx.datastore && !strings.Contains(p.path, "/") {
			fixed := fmt.Sprintf("[%s] %s/%s", p.datastore, dir, p.path)
			if names[fixed] {
				continue // a correct entry exists (disk layouts add their own)
			}
			f.Name = fixed
			names[fixed] = true
		}
		files = append(files, f)
	}
	keys := map[string]int32{}
	nameOf := map[int32]string{}
	for _, f := range files {
		keys[f.Name] = f.Key
		nameOf[f.Key] = f.Name
	}

	snapshots := append([]types.VirtualMachineFileLayoutExSnapshotLayout(nil), vm.LayoutEx.Snapshot...)
	for i := range snapshots {
		s := &snapshots[i]
		name, known := l.vmsn[s.Key]
		if !known {
			// First sight, right after CreateSnapshot: the key is still right.
			l.vmsn[s.Key] = nameOf[s.DataKey]
			l.owner[s.Key] = vm.Self
			continue
		}
		if k, ok := keys[name]; ok && name != "" {
			s.DataKey = k
		} else {
			s.DataKey = -1 // matches no file
		}
	}

	if !reflect.DeepEqual(files, vm.LayoutEx.File) {
		vm.LayoutEx.File = files
	}
	if !reflect.DeepEqual(snapshots, vm.LayoutEx.Snapshot) {
		vm.LayoutEx.Snapshot = snapshots
	}
}

// dsPath is a datastore path, "[datastore] dir/file".
type dsPath struct {
	datastore string
	path      string
}

func (p *dsPath) parse(s string) bool {
	if !strings.HasPrefix(s, "[") {
		return false
	}
	ds, rest, ok := strings.Cut(s[1:], "]")
	if !ok {
		return false
	}
	p.datastore = ds
	p.path = strings.TrimSpace(rest)
	return true
}
