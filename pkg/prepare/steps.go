package prepare

// Step names a point in prepare or unprepare, for fault-injection tests.
type Step string

// Steps, in the order they happen.
const (
	StepStartedRecorded   Step = "prepare-started-recorded"
	StepMIGCreated        Step = "prepare-mig-created"
	StepVFIOBound         Step = "prepare-vfio-bound"
	StepMIGRecorded       Step = "prepare-mig-recorded"
	StepMPSStarted        Step = "prepare-mps-started"
	StepCDIWritten        Step = "prepare-cdi-written"
	StepCompletedRecorded Step = "prepare-completed-recorded"
	StepMPSStopped        Step = "unprepare-mps-stopped"
	StepMIGDestroyed      Step = "unprepare-mig-destroyed"
	StepVFIOReturned      Step = "unprepare-vfio-returned"
	StepCDIDeleted        Step = "unprepare-cdi-deleted"
	StepForgotten         Step = "unprepare-forgotten"
)

// AllSteps lists every Step in order.
var AllSteps = []Step{StepStartedRecorded, StepMIGCreated, StepVFIOBound, StepMIGRecorded, StepMPSStarted, StepCDIWritten, StepCompletedRecorded,
	StepMPSStopped, StepMIGDestroyed, StepVFIOReturned, StepCDIDeleted, StepForgotten}

func (p *Preparer) step(s Step) {
	if p.opts.AfterStep != nil {
		p.opts.AfterStep(s)
	}
}
