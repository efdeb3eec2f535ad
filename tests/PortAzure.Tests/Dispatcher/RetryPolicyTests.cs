using PortAzure.Dispatcher;
using PortAzure.Dispatcher.Delivery;
using PortAzure.Dispatcher.Retry;

namespace PortAzure.Tests.Dispatcher;

public class RetryPolicyTests
{
    private static readonly DateTimeOffset Now = new(2026, 11, 25, 12, 0, 0, TimeSpan.Zero);

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 2)]
    [InlineData(3, 4)]
    [InlineData(5, 16)]
    [InlineData(10, 512)]
    [InlineData(11, 600)]
    [InlineData(40, 600)]
    public void Delay_DefaultsWithoutJitter_DoublesFromOneSecondCappedAtTenMinutes(int attempt, double seconds)
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 0.5);
        Assert.Equal(TimeSpan.FromSeconds(seconds), policy.Delay(attempt, null));
    }

    [Theory]
    [InlineData(0.0, 0.8)]
    [InlineData(1.0, 1.2)]
    public void Delay_Jitter_SpreadsByTwentyPercentEitherWay(double random, double factor)
    {
        var policy = new RetryPolicy(new RetryOptions(), () => random);
        Assert.Equal(4 * factor, policy.Delay(3, null).TotalSeconds, 6);
    }

    [Fact]
    public void Delay_JitterNeverPassesTheCap()
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 1.0);
        Assert.Equal(TimeSpan.FromMinutes(10), policy.Delay(20, null));
    }

    [Theory]
    [InlineData(1, 7, 7)]
    [InlineData(1, 3600, 600)]
    [InlineData(5, 30, 30)]
    public void Delay_RetryAfterLongerThanTheBackoff_IsWaitedOutUpToTheCap(int attempt, int retryAfter, int expected)
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 0.0);
        Assert.Equal(TimeSpan.FromSeconds(expected), policy.Delay(attempt, TimeSpan.FromSeconds(retryAfter)));
    }

    [Theory]
    [InlineData(0.0, 30)]
    [InlineData(0.5, 33)]
    [InlineData(1.0, 36)]
    public void Delay_RetryAfterLongerThanTheBackoff_IsSpreadAfterItByTheJitter(double random, double expected)
    {
        var policy = new RetryPolicy(new RetryOptions(), () => random);
        Assert.Equal(expected, policy.Delay(1, TimeSpan.FromSeconds(30)).TotalSeconds, 6);
    }

    [Theory]
    [InlineData(590, 0.0, 590)]
    [InlineData(590, 0.5, 595)]
    [InlineData(590, 1.0, 600)]
    [InlineData(3600, 0.0, 600)]
    [InlineData(3600, 0.5, 540)]
    [InlineData(3600, 1.0, 480)]
    public void Delay_RetryAfterAtOrPastTheCap_IsSpreadWithinTheCap(int retryAfter, double random, double expected)
    {
        // Not all on the cap itself: runs throttled together would come due together again.
        var policy = new RetryPolicy(new RetryOptions(), () => random);
        Assert.Equal(expected, policy.Delay(1, TimeSpan.FromSeconds(retryAfter)).TotalSeconds, 6);
    }

    [Theory]
    [InlineData(1, 0, 1)]
    [InlineData(1, -5, 1)]
    [InlineData(5, 3, 16)]
    [InlineData(11, 0, 600)]
    public void Delay_RetryAfterShorterThanTheBackoff_KeepsTheBackoff(int attempt, int retryAfter, int expected)
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 0.5);
        Assert.Equal(TimeSpan.FromSeconds(expected), policy.Delay(attempt, TimeSpan.FromSeconds(retryAfter)));
    }

    [Fact]
    public void NextAttemptAt_RetryAfterZeroEveryTime_KeepsTheBackoffSchedule()
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 0.5);
        var at = Now;
        for (var attempt = 1; policy.NextAttemptAt(attempt, at, Now, TimeSpan.Zero) is { } next; attempt++)
        {
            at = next;
        }
        // 1 + 2 + ... + 256 s: the nine waits between ten attempts, as without Retry-After.
        Assert.Equal(TimeSpan.FromSeconds(511), at - Now);
    }

    [Fact]
    public void NextAttemptAt_TenthAttemptFailed_GivesUp()
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 0.5);
        Assert.NotNull(policy.NextAttemptAt(9, Now, Now, null));
        Assert.Null(policy.NextAttemptAt(10, Now, Now, null));
    }

    [Fact]
    public void NextAttemptAt_PastTwentyFourHours_GivesUp()
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 0.5);
        var since = Now - TimeSpan.FromHours(23.9);
        Assert.Null(policy.NextAttemptAt(2, Now, since, TimeSpan.FromMinutes(10)));
        Assert.Equal(Now + TimeSpan.FromSeconds(2), policy.NextAttemptAt(2, Now, Now - TimeSpan.FromHours(1), null));
    }

    [Fact]
    public void Schedule_Defaults_TotalsWellUnderADayOverTenAttempts()
    {
        var policy = new RetryPolicy(new RetryOptions(), () => 0.5);
        var at = Now;
        var attempts = 1;
        while (policy.NextAttemptAt(attempts, at, Now, null) is { } next)
        {
            at = next;
            attempts++;
        }
        Assert.Equal(10, attempts);
        Assert.Equal(TimeSpan.FromSeconds(1 + 2 + 4 + 8 + 16 + 32 + 64 + 128 + 256), at - Now);
    }
}

public class OutcomeClassifierTests
{
    [Theory]
    [InlineData(200, nameof(AttemptOutcome.Delivered))]
    [InlineData(201, nameof(AttemptOutcome.Delivered))]
    [InlineData(204, nameof(AttemptOutcome.Delivered))]
    [InlineData(408, nameof(AttemptOutcome.Transient))]
    [InlineData(429, nameof(AttemptOutcome.Transient))]
    [InlineData(500, nameof(AttemptOutcome.Transient))]
    [InlineData(502, nameof(AttemptOutcome.Transient))]
    [InlineData(503, nameof(AttemptOutcome.Transient))]
    [InlineData(504, nameof(AttemptOutcome.Transient))]
    [InlineData(301, nameof(AttemptOutcome.Permanent))]
    [InlineData(302, nameof(AttemptOutcome.Permanent))]
    [InlineData(400, nameof(AttemptOutcome.Permanent))]
    [InlineData(401, nameof(AttemptOutcome.Permanent))]
    [InlineData(403, nameof(AttemptOutcome.Permanent))]
    [InlineData(404, nameof(AttemptOutcome.Permanent))]
    [InlineData(409, nameof(AttemptOutcome.Permanent))]
    [InlineData(501, nameof(AttemptOutcome.Permanent))]
    public void Classify_StatusCode_GivesTheOutcomeClass(int status, string expected)
    {
        Assert.Equal(expected, OutcomeClassifier.Classify(status).ToString());
    }

    [Theory]
    [InlineData(500, null, "run the pipeline")]
    [InlineData(404, null, "organisation name")]
    [InlineData(400, null, "Secret")]
    [InlineData(401, null, "Headers")]
    [InlineData(302, null, "redirect")]
    [InlineData(null, "timeout", "timeout")]
    [InlineData(null, "connection", "could not be reached")]
    [InlineData(null, "answer_lost", "check its runs before replaying")]
    public void Hint_KnownFailures_NameWhatToDo(int? status, string? error, string expected)
    {
        Assert.Contains(expected, OutcomeClassifier.Hint(status, error), StringComparison.OrdinalIgnoreCase);
    }
}
