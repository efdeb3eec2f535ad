using PortAzure.LoadBench;

namespace PortAzure.Tests.Bench;

/// <summary>The benchmark harness's verdict on a scenario: what CI's smoke run fails on.</summary>
public class VerificationTests
{
    private static readonly DateTimeOffset At = DateTimeOffset.UnixEpoch;

    private static Delivered Record(string? runId, int status = 200, bool signatureValid = true) => new(runId, At, status, signatureValid);

    [Fact]
    public void Check_EachAcceptedRunOnce_IsOk()
    {
        var verification = Verification.Check("s", ["a", "b", "c"], [Record("c"), Record("a"), Record("b")]);

        Assert.True(verification.Ok);
        Assert.Equal((3, 3, 0, 0, 0, 0), (verification.Accepted, verification.DeliveredRecords, verification.Lost, verification.Duplicated, verification.Unexpected, verification.BadSignature));
    }

    [Fact]
    public void Check_AcceptedRunNeverDelivered_FailsAsLost()
    {
        var verification = Verification.Check("s", ["a", "b", "c"], [Record("a"), Record("c")]);

        Assert.False(verification.Ok);
        Assert.Equal(1, verification.Lost);
        Assert.Contains("lost 1", verification.ToString(), StringComparison.Ordinal);
        Assert.EndsWith("FAIL", verification.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_RunDeliveredTwice_FailsAsDuplicated()
    {
        var verification = Verification.Check("s", ["a", "b"], [Record("a"), Record("b"), Record("a")]);

        Assert.False(verification.Ok);
        Assert.Equal(1, verification.Duplicated);
        Assert.Equal(0, verification.Lost);
    }

    [Theory]
    [InlineData(200, false)]
    [InlineData(500, true)]
    public void Check_BadSignatureOrFailedStatus_Fails(int status, bool signatureValid)
    {
        var verification = Verification.Check("s", ["a"], [Record("a", status, signatureValid)]);

        Assert.False(verification.Ok);
        Assert.Equal(1, verification.BadSignature);
    }

    [Fact]
    public void Check_RecordOfARunNeverAccepted_IsCountedButNotAFailure()
    {
        // Not a run of this harness (a record without a run id, one from another tool): reported, not a verdict.
        var verification = Verification.Check("s", ["a"], [Record("a"), Record("other"), Record(null)], earlier: new HashSet<string> { "old" });

        Assert.True(verification.Ok);
        Assert.Equal(2, verification.Unexpected);
        Assert.Equal(0, verification.Late);
    }

    [Fact]
    public void Check_RunOfAnEarlierScenarioDeliveredAgain_FailsAsLate()
    {
        // The earlier scenario's check found it delivered once: this record is its second delivery (a late reclaim).
        var verification = Verification.Check("s", ["a"], [Record("a"), Record("old")], earlier: new HashSet<string> { "old" });

        Assert.False(verification.Ok);
        Assert.Equal(1, verification.Late);
        Assert.Equal(0, verification.Unexpected);
    }

    [Fact]
    public void Check_RelayNotQuiet_Fails()
    {
        // Entries still pending or retries scheduled could deliver a run again after this check.
        var verification = Verification.Check("s", ["a"], [Record("a")], quiescent: false);

        Assert.False(verification.Ok);
        Assert.Contains("relay NOT quiet", verification.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_AcceptedIdsRepeatedInTheInput_AreCountedOnce()
    {
        var verification = Verification.Check("s", ["a", "a"], [Record("a")]);

        Assert.True(verification.Ok);
        Assert.Equal(1, verification.Accepted);
    }

    [Fact]
    public void Check_NoRunAccepted_Fails()
    {
        var verification = Verification.Check("s", [], []);

        Assert.False(verification.Ok);
        Assert.Contains("FAIL (no run accepted)", verification.ToString(), StringComparison.Ordinal);
    }
}
